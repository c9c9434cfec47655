"""BoxRuntimeContract: what every box runtime must do, run against a real engine.

Override ``runtime`` (a BoxRuntime) and ``image`` (an image with ``/bin/sh`` and the usual
busybox/coreutils tools — ``cat``, ``stat``, ``hostname``, ``yes``, ``head``, ``sleep`` — that the
engine can run offline). Override ``unmanaged_container`` to create a container the runtime did
not label, so the contract can check it stays invisible and untouched. Boxes created here are
destroyed afterwards.

Engine-specific checks (limits as the engine records them, how many containers exist, what a
stopped engine looks like) belong in the runtime's own tests; everything here holds for any
engine.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import anyio
import pytest

from ..boxes import EXEC_OUTPUT_LIMIT, EXEC_TIMEOUT_EXIT_CODE, TRUNCATION_MARKER
from ..errors import Conflict, InvalidInput, NotFound
from ..interfaces import BoxRuntime
from ..types import BoxFile, BoxSpec

#: ids every runtime must refuse (upper case, dash at either end, slash, 64 characters, empty,
#: underscore, dot)
BAD_IDS = ["UPPER", "-x", "x-", "a/b", "a" * 64, "", "a_b", "a.b"]

#: what ``unmanaged_container(name)`` may return: an async "does it still exist?" check
StillThere = Callable[[], Awaitable[bool]]


async def wait_for_logs(runtime: BoxRuntime, box_id: str, text: str, seconds: float = 5.0) -> str:
    """The box's logs once they contain ``text`` (or the last logs read after ``seconds``)."""
    deadline = time.monotonic() + seconds
    logs = await runtime.logs(box_id)
    while text not in logs and time.monotonic() < deadline:
        await anyio.sleep(0.05)
        logs = await runtime.logs(box_id)
    return logs


class BoxRuntimeContract:
    """Subclass and override ``runtime`` and ``image`` (and ``unmanaged_container``)."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def anyio_backend(self) -> str:
        """asyncio, the backend valetkey serves on. Defined on the class: with trio installed,
        anyio's own pytest plugin parametrizes over every backend and can win over the kit's
        plugin-level fixture."""
        return "asyncio"

    @pytest.fixture
    def runtime(self) -> BoxRuntime:
        raise NotImplementedError("override 'runtime' to return your box runtime")

    @pytest.fixture
    def image(self) -> str:
        raise NotImplementedError("override 'image' with an image that has /bin/sh")

    @pytest.fixture
    def unmanaged_container(self) -> Callable[[str], Awaitable[StillThere | None]] | None:
        """Return an async ``create(name)`` making a running container named ``name`` without
        the managed label. It may return an async ``still_there()`` check, which the contract
        uses to assert the runtime left the container alone."""
        return None

    @pytest.fixture
    async def box_id(self, runtime: BoxRuntime) -> AsyncIterator[str]:
        box_id = f"vk-contract-{secrets.token_hex(4)}"
        yield box_id
        with contextlib.suppress(NotFound):
            await runtime.destroy(box_id)

    def spec(self, box_id: str, image: str, **changes: Any) -> BoxSpec:
        """A small box that keeps running and echoes its stdin to its output."""
        base = BoxSpec(
            box_id=box_id,
            image=image,
            command=("sh", "-c", "cat; sleep 600"),
            memory_mib=256,
            cpus=0.5,
            pids=128,
            network="none",
        )
        return replace(base, **changes)

    async def test_matches_the_protocol(self, runtime: BoxRuntime) -> None:
        assert isinstance(runtime, BoxRuntime)
        assert runtime.name

    async def test_create_get_list_destroy(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        box = await runtime.create(self.spec(box_id, image, description="contract box"))
        assert box.id == box_id
        assert box.runtime == runtime.name
        assert box.container_id
        got = await runtime.get(box_id)
        assert (got.id, got.description, got.container_id) == (
            box_id,
            "contract box",
            box.container_id,
        )
        assert box_id in {b.id for b in await runtime.list()}
        assert all(b.runtime == runtime.name for b in await runtime.list())
        await runtime.destroy(box_id)
        with pytest.raises(NotFound):
            await runtime.get(box_id)
        assert box_id not in {b.id for b in await runtime.list()}
        with pytest.raises(NotFound):
            await runtime.destroy(box_id)

    async def test_box_id_is_the_hostname(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        await runtime.create(self.spec(box_id, image))
        assert (await runtime.exec(box_id, "hostname")).stdout == f"{box_id}\n"

    @pytest.mark.parametrize("bad", BAD_IDS)
    async def test_invalid_ids_are_refused_before_anything_exists(
        self, runtime: BoxRuntime, image: str, bad: str
    ) -> None:
        before = {b.id for b in await runtime.list()}
        with pytest.raises(InvalidInput):
            await runtime.create(self.spec(bad, image))
        assert {b.id for b in await runtime.list()} == before

    async def test_duplicate_id_is_a_conflict(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        first = await runtime.create(self.spec(box_id, image))
        with pytest.raises(Conflict):
            await runtime.create(self.spec(box_id, image, description="second"))
        boxes = [b for b in await runtime.list() if b.id == box_id]
        assert [b.container_id for b in boxes] == [first.container_id]

    async def test_bad_files_are_refused_before_anything_exists(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        for bad in ("relative.txt", "/etc/../x", "/etc/dir/"):
            with pytest.raises(InvalidInput):
                await runtime.create(self.spec(box_id, image, files=(BoxFile(bad, b"x"),)))
        assert box_id not in {b.id for b in await runtime.list()}

    async def test_exec_returns_output_and_exit_code(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        await runtime.create(self.spec(box_id, image))
        result = await runtime.exec(box_id, "echo hi; echo oops >&2; exit 3")
        assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "oops\n", 3)
        assert not result.truncated
        ok = await runtime.exec(box_id, "printf '%s' \"$0\"; true")
        assert (ok.stdout, ok.exit_code) == ("sh", 0)

    async def test_exec_output_is_capped(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        await runtime.create(self.spec(box_id, image))
        result = await runtime.exec(box_id, "yes x | head -c 200000; yes e | head -c 100 >&2")
        assert result.truncated
        assert result.exit_code == 0
        assert result.stdout.endswith(TRUNCATION_MARKER)
        assert result.stdout.startswith("x\nx\n")
        assert EXEC_OUTPUT_LIMIT <= len(result.stdout) < EXEC_OUTPUT_LIMIT + 64
        assert result.stderr == "e\n" * 50  # the other stream is not cut
        exact = await runtime.exec(box_id, f"yes x | head -c {EXEC_OUTPUT_LIMIT}")
        assert (len(exact.stdout), exact.truncated) == (EXEC_OUTPUT_LIMIT, False)

    async def test_exec_timeout_is_a_result(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        await runtime.create(self.spec(box_id, image))
        started = time.monotonic()
        result = await runtime.exec(box_id, "echo started; sleep 30", timeout=1.0)
        assert time.monotonic() - started < 10
        assert result.exit_code == EXEC_TIMEOUT_EXIT_CODE
        assert result.stdout == "started\n"
        assert result.stderr.endswith("... [timed out after 1s]")
        assert (await runtime.exec(box_id, "echo still here")).stdout == "still here\n"

    async def test_files_are_injected_with_mode_and_owner(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        files = (
            BoxFile(path="/etc/vk/hello.txt", content=b"hello\n", mode=0o600),
            BoxFile(
                path="/opt/vk/bin/run.sh",
                content=b"#!/bin/sh\necho ran\n",
                mode=0o750,
                uid=1000,
                gid=1001,
            ),
        )
        await runtime.create(self.spec(box_id, image, files=files))
        result = await runtime.exec(
            box_id, "cat /etc/vk/hello.txt; stat -c '%a %u %g' /etc/vk/hello.txt /opt/vk/bin/run.sh"
        )
        assert result.stdout == "hello\n600 0 0\n750 1000 1001\n"
        assert (await runtime.exec(box_id, "/opt/vk/bin/run.sh")).stdout == "ran\n"

    async def test_files_are_there_before_the_main_process_starts(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        files = (BoxFile(path="/etc/vk/boot.txt", content=b"booted-with-file\n"),)
        command = ("sh", "-c", "cat /etc/vk/boot.txt; sleep 600")
        await runtime.create(self.spec(box_id, image, files=files, command=command))
        assert "booted-with-file" in await wait_for_logs(runtime, box_id, "booted-with-file")

    async def test_env_is_set(self, runtime: BoxRuntime, image: str, box_id: str) -> None:
        env = {"VK_GREETING": "hi there", "VK_EMPTY": ""}
        await runtime.create(self.spec(box_id, image, env=env))
        result = await runtime.exec(box_id, 'echo "$VK_GREETING"; echo "[${VK_EMPTY-unset}]"')
        assert result.stdout == "hi there\n[]\n"

    async def test_stdin_reaches_the_main_process(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        command = ("sh", "-c", "read line; echo got:$line; sleep 600")
        await runtime.create(self.spec(box_id, image, command=command))
        await runtime.write_stdin(box_id, b"code-123\n")
        assert "got:code-123" in await wait_for_logs(runtime, box_id, "got:code-123")

    async def test_stdin_can_be_written_twice(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        await runtime.create(self.spec(box_id, image))  # cat echoes every line
        await runtime.write_stdin(box_id, b"first\n")
        assert "first" in await wait_for_logs(runtime, box_id, "first")
        await runtime.write_stdin(box_id, b"second\n")
        assert "second" in await wait_for_logs(runtime, box_id, "second")

    async def test_logs_tail_and_ansi(self, runtime: BoxRuntime, image: str, box_id: str) -> None:
        script = (
            "i=1; while [ $i -le 250 ]; do echo line-$i; i=$((i+1)); done; "
            "printf '\\033[1;31mred\\033[0m plain\\n'; sleep 600"
        )
        await runtime.create(self.spec(box_id, image, command=("sh", "-c", script)))
        logs = await wait_for_logs(runtime, box_id, "plain")
        lines = logs.splitlines()
        assert lines[-1] == "red plain"
        assert "\x1b" not in logs
        assert len(lines) == 200  # the default tail
        assert lines[0] == "line-52"
        assert (await runtime.logs(box_id, tail=3)).splitlines() == [
            "line-249",
            "line-250",
            "red plain",
        ]

    async def test_is_alive_follows_the_container(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        box = await runtime.create(self.spec(box_id, image))
        assert box.container_id
        assert await runtime.is_alive(box.container_id) is True
        await runtime.destroy(box_id)
        assert await runtime.is_alive(box.container_id) is False

    async def test_is_alive_is_false_once_the_main_process_exits(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        box = await runtime.create(self.spec(box_id, image, command=("sh", "-c", "exit 0")))
        assert box.container_id
        deadline = time.monotonic() + 10
        while await runtime.is_alive(box.container_id) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        assert await runtime.is_alive(box.container_id) is False
        assert (await runtime.get(box_id)).id == box_id  # stopped boxes are still boxes

    async def test_unknown_box_is_not_found_everywhere(self, runtime: BoxRuntime) -> None:
        for call in (
            runtime.get("vk-nope"),
            runtime.destroy("vk-nope"),
            runtime.exec("vk-nope", "true"),
            runtime.logs("vk-nope"),
            runtime.write_stdin("vk-nope", b"x\n"),
        ):
            with pytest.raises(NotFound):
                await call
        assert await runtime.is_alive("0" * 64) is False

    async def test_unmanaged_containers_are_invisible(
        self,
        runtime: BoxRuntime,
        unmanaged_container: Callable[[str], Awaitable[StillThere | None]] | None,
    ) -> None:
        if unmanaged_container is None:
            pytest.skip("this runtime's tests provide no way to create an unmanaged container")
        name = f"vk-unmanaged-{secrets.token_hex(4)}"
        still_there = await unmanaged_container(name)
        assert name not in {b.id for b in await runtime.list()}
        for call in (
            runtime.get(name),
            runtime.destroy(name),
            runtime.exec(name, "true"),
            runtime.logs(name),
            runtime.write_stdin(name, b"x\n"),
        ):
            with pytest.raises(NotFound):
                await call
        if still_there is not None:
            assert await still_there(), "the runtime touched a container it does not manage"
