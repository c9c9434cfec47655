"""valetkey_hookspecs.boxes: the engine-neutral rules every box runtime applies (ids, files,
limits, exec output caps, ANSI stripping)."""

from __future__ import annotations

import pytest

from valetkey_hookspecs import BoxFile, BoxSpec, InvalidInput
from valetkey_hookspecs.boxes import (
    EXEC_OUTPUT_LIMIT,
    TRUNCATION_MARKER,
    cap_output,
    check_box_files,
    check_box_id,
    is_valid_box_id,
    managed_labels,
    resolve_limits,
    strip_ansi,
    timed_out,
)
from valetkey_hookspecs.testing.box_runtime import BAD_IDS


@pytest.mark.parametrize("good", ["a", "0", "vk-1", "a" * 63, "a-b-c", "9box"])
def test_valid_ids(good: str) -> None:
    assert check_box_id(good) == good


@pytest.mark.parametrize("bad", [*BAD_IDS, "a\n", " a", "é", "a--"[:2] + "-"])
def test_invalid_ids_name_the_rule(bad: str) -> None:
    assert not is_valid_box_id(bad)
    with pytest.raises(InvalidInput, match="invalid box id"):
        check_box_id(bad)


def test_long_ids_are_shortened_in_the_message() -> None:
    with pytest.raises(InvalidInput) as info:
        check_box_id("a" * 500)
    assert len(str(info.value)) < 250


@pytest.mark.parametrize(
    "path", ["relative", "/etc/", "/etc/../passwd", "/a/\x00b", "", "/x/./../y"]
)
def test_bad_file_paths(path: str) -> None:
    with pytest.raises(InvalidInput):
        check_box_files([BoxFile(path, b"x")])


def test_files_twice_and_bad_modes() -> None:
    with pytest.raises(InvalidInput, match="twice"):
        check_box_files([BoxFile("/a/b", b""), BoxFile("/a//b", b"")])
    with pytest.raises(InvalidInput, match="mode"):
        check_box_files([BoxFile("/a", b"", mode=0o17777)])
    with pytest.raises(InvalidInput, match="uid"):
        check_box_files([BoxFile("/a", b"", uid=-1)])
    check_box_files([BoxFile("/etc/x", b"", mode=0o4755, uid=1000, gid=1000)])


def test_limits_come_from_the_spec_else_the_runtime() -> None:
    spec = BoxSpec(box_id="b", image="i")
    assert resolve_limits(spec) == (4096, 2.0, 4096)
    assert resolve_limits(spec, memory_mib=512, cpus=1.0, pids=64) == (512, 1.0, 64)
    own = BoxSpec(box_id="b", image="i", memory_mib=128, cpus=0.5, pids=32)
    assert resolve_limits(own, memory_mib=512) == (128, 0.5, 32)
    with pytest.raises(InvalidInput, match="cpus"):
        resolve_limits(BoxSpec(box_id="b", image="i", cpus=0))


def test_cap_output() -> None:
    assert cap_output(b"hi\n") == ("hi\n", False)
    exact = b"x" * EXEC_OUTPUT_LIMIT
    assert cap_output(exact) == (exact.decode(), False)
    text, cut = cap_output(b"x" * (EXEC_OUTPUT_LIMIT + 1))
    assert cut
    assert text == "x" * EXEC_OUTPUT_LIMIT + "\n" + TRUNCATION_MARKER
    # a multi-byte character cut at the limit is dropped, not turned into garbage
    text, cut = cap_output(b"a" * (EXEC_OUTPUT_LIMIT - 1) + "é".encode() * 4)
    assert cut
    assert text == "a" * (EXEC_OUTPUT_LIMIT - 1) + "\n" + TRUNCATION_MARKER
    assert cap_output(b"\xff ok")[0] == "\ufffd ok"


def test_strip_ansi() -> None:
    colored = "\x1b[1;31mred\x1b[0m \x1b]0;title\x07plain\x1b[2K\x1b[10;5H!\x1b(B\x1b=\x1b7"
    assert strip_ansi(colored) == "red plain!"
    assert strip_ansi("no escapes\n") == "no escapes\n"


def test_timed_out_and_labels() -> None:
    assert timed_out("", 1.0) == "... [timed out after 1s]"
    assert timed_out("err", 2.5) == "err\n... [timed out after 2.5s]"
    assert managed_labels("b1", "d") == {
        "valetkey.managed": "1",
        "valetkey.box-id": "b1",
        "valetkey.description": "d",
    }
