"""BoxRuntimeContract: what every box runtime must do, run against a real engine.

Override ``runtime`` (a BoxRuntime) and ``image`` (an image with ``/bin/sh`` that the engine can
run offline); override ``unmanaged_container`` to create a container the runtime did not label,
so the contract can check it stays invisible. Boxes created here are destroyed afterwards.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from ..errors import Conflict, InvalidInput, NotFound
from ..interfaces import BoxRuntime
from ..types import BoxFile, BoxSpec

BAD_IDS = ["UPPER", "-x", "x-", "a/b", "a" * 64, "", "a_b", "a.b"]


class BoxRuntimeContract:
    """Subclass and override ``runtime`` and ``image``."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def runtime(self) -> BoxRuntime:
        raise NotImplementedError("override 'runtime' to return your box runtime")

    @pytest.fixture
    def image(self) -> str:
        raise NotImplementedError("override 'image' with an image that has /bin/sh")

    @pytest.fixture
    def unmanaged_container(self) -> Callable[[str], Awaitable[None]] | None:
        """Return an async ``create(name)`` making a container without the managed label."""
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

    def test_matches_the_protocol(self, runtime: BoxRuntime) -> None:
        assert isinstance(runtime, BoxRuntime)
        assert runtime.name

    async def test_create_get_list_destroy(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        box = await runtime.create(self.spec(box_id, image, description="contract"))
        assert box.id == box_id
        assert box.runtime == runtime.name
        assert (await runtime.get(box_id)).id == box_id
        assert box_id in {b.id for b in await runtime.list()}
        await runtime.destroy(box_id)
        with pytest.raises(NotFound):
            await runtime.get(box_id)
        assert box_id not in {b.id for b in await runtime.list()}

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
        await runtime.create(self.spec(box_id, image))
        with pytest.raises(Conflict):
            await runtime.create(self.spec(box_id, image))

    async def test_exec_returns_output_and_exit_code(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        await runtime.create(self.spec(box_id, image))
        result = await runtime.exec(box_id, "echo hi; echo oops >&2; exit 3")
        assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "oops\n", 3)
        assert not result.truncated

    async def test_exec_output_is_capped(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        await runtime.create(self.spec(box_id, image))
        result = await runtime.exec(box_id, "yes x | head -c 200000")
        assert result.truncated
        assert result.stdout.endswith("... [output truncated]")
        assert len(result.stdout) < 70 * 1024

    async def test_files_are_injected_with_mode(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        files = (BoxFile(path="/etc/vk/hello.txt", content=b"hello\n", mode=0o600),)
        await runtime.create(self.spec(box_id, image, files=files))
        result = await runtime.exec(box_id, "cat /etc/vk/hello.txt; stat -c %a /etc/vk/hello.txt")
        assert result.stdout == "hello\n600\n"

    async def test_env_is_set(self, runtime: BoxRuntime, image: str, box_id: str) -> None:
        await runtime.create(self.spec(box_id, image, env={"VK_GREETING": "hi there"}))
        assert (await runtime.exec(box_id, 'echo "$VK_GREETING"')).stdout == "hi there\n"

    async def test_stdin_reaches_the_main_process(
        self, runtime: BoxRuntime, image: str, box_id: str
    ) -> None:
        await runtime.create(self.spec(box_id, image))
        await runtime.write_stdin(box_id, b"code-123\n")
        for _ in range(50):
            if "code-123" in await runtime.logs(box_id):
                break
            import anyio

            await anyio.sleep(0.1)
        assert "code-123" in await runtime.logs(box_id)

    async def test_unknown_box_is_not_found_everywhere(self, runtime: BoxRuntime) -> None:
        for call in (
            runtime.get("vk-nope"),
            runtime.destroy("vk-nope"),
            runtime.exec("vk-nope", "true"),
            runtime.logs("vk-nope"),
        ):
            with pytest.raises(NotFound):
                await call

    async def test_unmanaged_containers_are_invisible(
        self,
        runtime: BoxRuntime,
        unmanaged_container: Callable[[str], Awaitable[None]] | None,
    ) -> None:
        if unmanaged_container is None:
            pytest.skip("this runtime's tests provide no way to create an unmanaged container")
        name = f"vk-unmanaged-{secrets.token_hex(4)}"
        await unmanaged_container(name)
        assert name not in {b.id for b in await runtime.list()}
        with pytest.raises(NotFound):
            await runtime.destroy(name)
