"""The command layer without any process: exact argv of every operation, id validation, the env
file, the file tar, output capping, ANSI stripping and error mapping. Names and shapes follow the
CLI's docs and source (see ``valetkey_runtime_apple.commands``); none of it ran on a real engine.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from valetkey_hookspecs import BoxFile, BoxSpec
from valetkey_hookspecs.errors import InvalidInput, NotFound, PluginError
from valetkey_hookspecs.testing.box_runtime import BAD_IDS
from valetkey_runtime_apple import commands as c

from .conftest import recorded


def spec(**changes) -> BoxSpec:
    base = dict(box_id="vk-one", image="alpine:3.20")
    base.update(changes)
    return BoxSpec(**base)


def test_create_argv_with_defaults_is_exact():
    argv = c.create_argv(
        "container", spec(description="first box"), "/tmp/x/box.env", memory_mib=4096, cpus=2.0
    )
    assert argv == [
        "container", "create", "--name", "vk-one",
        "--label", "valetkey.managed=1",
        "--label", "valetkey.box-id=vk-one",
        "--label", "valetkey.description=first box",
        "--cpus", "2", "--memory", "4096M",
        "--interactive",
        "--env-file", "/tmp/x/box.env",
        "alpine:3.20",
    ]  # fmt: skip


def test_create_argv_with_command_network_labels_and_no_stdin():
    argv = c.create_argv(
        "/opt/bin/container",
        spec(
            command=("sh", "-c", "cat; sleep 600"),
            network="none",
            labels={"team": "a", "valetkey.managed": "0"},
            stdin_open=False,
        ),
        None,
        memory_mib=256,
        cpus=0.5,
        network="default-net",  # the spec's network wins over the configured one
    )
    assert argv == [
        "/opt/bin/container", "create", "--name", "vk-one",
        "--label", "team=a",
        "--label", "valetkey.managed=1",  # the managed labels win over the caller's
        "--label", "valetkey.box-id=vk-one",
        "--cpus", "1", "--memory", "256M",
        "--network", "none",
        "alpine:3.20", "sh", "-c", "cat; sleep 600",
    ]  # fmt: skip


def test_create_argv_never_carries_env_values():
    argv = c.create_argv(
        "container", spec(env={"TOKEN": "s3cret-value"}), "/tmp/f", memory_mib=1, cpus=1
    )
    assert not any("s3cret-value" in part for part in argv)
    assert not any("TOKEN" in part for part in argv)


def test_create_argv_gates_the_command_when_files_are_injected():
    argv = c.create_argv(
        "container",
        spec(command=("agent", "login"), files=(BoxFile("/a", b"x"),)),
        None,
        memory_mib=1,
        cpus=1,
        network="vk-net",
    )
    assert argv[argv.index("--network") + 1] == "vk-net"
    assert argv[-6:] == [
        "sh", "-c",
        'while [ ! -e /.valetkey-files-ready ]; do sleep 0.1 2>/dev/null || sleep 1; done; '
        'exec "$@"',
        "valetkey-gate", "agent", "login",
    ]  # fmt: skip


@pytest.mark.parametrize(("cpus", "expected"), [(0.1, "1"), (1, "1"), (1.5, "2"), (2.0, "2")])
def test_cpus_are_whole_numbers_rounded_up(cpus, expected):
    assert c.cpus_arg(cpus) == expected


def test_memory_must_be_positive():
    with pytest.raises(InvalidInput):
        c.memory_arg(0)


def test_other_argv_are_exact():
    assert c.start_argv("container", "vk-one", interactive=True) == [
        "container", "start", "--interactive", "vk-one"]  # fmt: skip
    assert c.start_argv("container", "vk-one", interactive=False) == [
        "container", "start", "vk-one"]  # fmt: skip
    assert c.exec_argv("container", "vk-one", "echo hi; exit 3") == [
        "container", "exec", "vk-one", "sh", "-c", "echo hi; exit 3"]  # fmt: skip
    assert c.inject_argv("container", "vk-one") == [
        "container", "exec", "--interactive", "--uid", "0", "--gid", "0", "vk-one",
        "tar", "-x", "-f", "-", "-C", "/"]  # fmt: skip
    assert c.logs_argv("container", "vk-one", 200) == [
        "container", "logs", "-n", "200", "vk-one"]  # fmt: skip
    assert c.logs_argv("container", "vk-one", -5) == ["container", "logs", "-n", "0", "vk-one"]
    assert c.stop_argv("container", "vk-one", 10) == [
        "container", "stop", "--signal", "SIGTERM", "--time", "10", "vk-one"]  # fmt: skip
    assert c.delete_argv("container", "vk-one") == ["container", "delete", "vk-one"]
    assert c.delete_argv("container", "vk-one", force=True) == [
        "container", "delete", "--force", "vk-one"]  # fmt: skip
    assert c.list_argv("container") == ["container", "list", "--all", "--format", "json"]
    assert c.inspect_argv("container", "vk-one") == ["container", "inspect", "vk-one"]
    assert c.status_argv("container") == ["container", "system", "status"]


@pytest.mark.parametrize("bad", [*BAD_IDS, "UPPER", "-x", "a/b", "a" * 64, "x y", "é"])
def test_invalid_ids_are_refused(bad):
    with pytest.raises(InvalidInput, match="invalid box id"):  # the shared rule (boxes.py)
        c.check_box_id(bad)


@pytest.mark.parametrize("good", ["a", "0", "vk-1", "a" * 63, "a-b-c"])
def test_valid_ids_pass(good):
    c.check_box_id(good)


def test_env_file_text():
    assert c.env_file_text({"A": "1", "B_2": "x y=z"}) == "A=1\nB_2=x y=z\n"


def test_env_file_refuses_what_it_cannot_carry_without_naming_the_value():
    with pytest.raises(InvalidInput) as caught:
        c.env_file_text({"TOKEN": "line1\nsecret-part"})
    assert "TOKEN" in str(caught.value)
    assert "secret-part" not in str(caught.value)
    with pytest.raises(InvalidInput, match="name"):
        c.env_file_text({"BAD-NAME": "v"})


def test_files_tar_keeps_mode_and_owner_and_ends_with_the_marker():
    data = c.files_tar([BoxFile("/etc/vk/hello.txt", b"hello\n", mode=0o600, uid=1000, gid=50)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["etc/vk/hello.txt", ".valetkey-files-ready"]
        hello = members[0]
        assert (hello.mode, hello.uid, hello.gid, hello.uname) == (0o600, 1000, 50, "")
        assert tar.extractfile(hello).read() == b"hello\n"
        assert all(m.isfile() for m in members)  # no folder entries to reset /tmp's mode


@pytest.mark.parametrize("path", ["relative/x", "/a/../etc/passwd", "/", "/etc/"])
def test_files_tar_refuses_bad_paths(path):
    with pytest.raises(InvalidInput):
        c.files_tar([BoxFile(path, b"")])


def test_cap_output_under_and_over_the_cap():
    assert c.cap_output(b"hi\n") == ("hi\n", False)
    # the executor keeps one byte more than the limit, so a cut stream is seen as cut
    text, cut = c.cap_output(b"x" * (c.EXEC_OUTPUT_LIMIT + 1))
    assert cut and text.endswith("\n" + c.TRUNCATION_MARKER)
    assert len(text) == c.EXEC_OUTPUT_LIMIT + 1 + len(c.TRUNCATION_MARKER)


def test_strip_ansi_on_recorded_logs():
    assert c.strip_ansi(recorded("logs_ansi.txt")) == (
        "Visit https://example.com/login?code=abc to sign in\nwaiting for code\nerror: none yet\n"
    )


@pytest.mark.parametrize("name", ["stop_not_found.txt", "delete_not_found.txt"])
def test_recorded_not_found_errors_map_to_not_found(name):
    stderr = recorded(name)
    assert c.is_not_found(stderr)
    with pytest.raises(NotFound, match="vk-nope"):
        c.raise_for("vk-nope", "stop of", 1, stderr)


def test_other_failures_are_plugin_errors_with_secrets_redacted():
    with pytest.raises(PluginError) as caught:
        c.raise_for("vk-one", "start of", 1, 'Error: internalError: "boom s3cret"\n', ["s3cret"])
    assert "s3cret" not in str(caught.value)
    assert "[REDACTED]" in str(caught.value)
    assert "exit 1" in str(caught.value)
    c.raise_for("vk-one", "start of", 0, "")  # success: nothing raised
