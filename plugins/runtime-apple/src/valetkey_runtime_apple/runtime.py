"""``AppleRuntime``: the box runtime contract over Apple's ``container`` CLI (macOS only).

UNTESTED ON A REAL ENGINE: built from the CLI's documentation and source (see ``commands``),
tested against recorded output shapes and a fake ``container`` program on Linux.

How each operation maps to the CLI:

- create: validate the id, check ``max_boxes`` and that no container has the name (``list``),
  write the env to a 0600 file in a 0700 temp folder, ``container create`` (removing the file
  right after), then ``container start`` — with ``--interactive`` when ``stdin_open``, as a
  process this runtime keeps: its stdin *is* the main process's stdin. Files go in with
  ``exec -i ... tar -x`` once the container runs; a box with files and a command waits for them
  (``commands.gated_command``). Any failure after ``create`` deletes the container again.
- write_stdin: writes to that kept process. The CLI cannot attach to a running container, so a
  box started by another process (or before a restart of this one) has no reachable stdin.
- exec: ``container exec <id> sh -c <command>``; each stream capped at 64 KiB.
- logs: ``container logs -n <tail>``, ANSI stripped.
- destroy: ``container stop --signal SIGTERM --time 10`` then ``container delete``.
- list/get/is_alive: ``container list --all --format json`` / ``container inspect``; only
  containers labelled ``valetkey.managed=1`` exist for this runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from valetkey_hookspecs.boxes import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MIB,
    EXEC_OUTPUT_LIMIT,
    EXEC_TIMEOUT_EXIT_CODE,
    check_box_id,
    is_valid_box_id,
    resolve_limits,
    timed_out,
)
from valetkey_hookspecs.errors import Conflict, NotFound, PluginError, RuntimeUnavailable
from valetkey_hookspecs.types import Box, BoxSpec, ExecResult

from . import commands as c
from .executor import Completed, Executor

log = logging.getLogger(__name__)

NAME = "apple"


@dataclass
class _Attached:
    """The ``container start --interactive`` process of a box, and the tail of its stderr."""

    process: asyncio.subprocess.Process
    stderr_tail: bytearray = field(default_factory=bytearray)
    reader: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def engine_problem(binary: str = "container", *, require_macos: bool = True) -> str | None:
    """Why the engine cannot be used here (not macOS, no CLI), or None."""
    if require_macos and sys.platform != "darwin":
        return (
            f"Apple's container runtime runs on macOS only (this is {sys.platform}); "
            "select another box runtime"
        )
    if shutil.which(binary) is None:
        return (
            f"the container CLI {binary!r} is not on PATH: install it from "
            "https://github.com/apple/container/releases and run 'container system start'"
        )
    return None


class AppleRuntime:
    """Boxes as Apple ``container`` VMs, driven through the CLI."""

    name = NAME

    def __init__(
        self,
        *,
        binary: str = "container",
        max_boxes: int = 20,
        memory_mib: int = DEFAULT_MEMORY_MIB,
        cpus: float = DEFAULT_CPUS,
        network: str | None = None,
        exec_timeout: float = 300.0,
        command_timeout: float = 60.0,
        start_timeout: float = 120.0,
        stop_timeout: int = 10,
        executor: Executor | None = None,
        require_macos: bool = True,
    ) -> None:
        self.binary = binary
        self.max_boxes = max_boxes
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.network = network
        self.exec_timeout = exec_timeout
        self.command_timeout = command_timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.executor = executor or Executor()
        self.require_macos = require_macos
        self._attached: dict[str, _Attached] = {}
        self._create_lock = asyncio.Lock()
        self._checked = False

    # ------------------------------------------------------------------ plumbing

    def _ensure_engine(self) -> None:
        if self._checked:
            return
        problem = engine_problem(self.binary, require_macos=self.require_macos)
        if problem:
            raise RuntimeUnavailable(problem)
        self._checked = True

    async def _run(
        self, argv: list[str], *, stdin: bytes | None = None, timeout: float | None = None
    ) -> Completed:
        self._ensure_engine()
        return await self.executor.run(
            argv, stdin=stdin, timeout=self.command_timeout if timeout is None else timeout
        )

    async def _containers(self) -> list[c.ContainerInfo]:
        done = await self._run(c.list_argv(self.binary))
        if done.exit_code != 0:
            raise RuntimeUnavailable(
                f"'container list' failed (exit {done.exit_code}): {c.error_line(done.err)} "
                "(is 'container system start' done?)"
            )
        return c.parse_containers(done.out)

    async def _inspect(self, container_id: str) -> c.ContainerInfo | None:
        """The container, or None when the CLI says it does not exist."""
        done = await self._run(c.inspect_argv(self.binary, container_id))
        if done.exit_code != 0:
            if c.is_not_found(done.err):
                return None
            raise RuntimeUnavailable(
                f"'container inspect' failed (exit {done.exit_code}): {c.error_line(done.err)}"
            )
        found = [info for info in c.parse_containers(done.out) if info.id == container_id]
        return found[0] if found else None

    async def _managed(self, box_id: str) -> c.ContainerInfo:
        """The managed container of ``box_id``; ``NotFound`` for a bad, unknown or foreign id."""
        if not is_valid_box_id(box_id):
            raise NotFound(f"no box {box_id!r}")
        info = await self._inspect(box_id)
        if info is None or not info.managed:
            raise NotFound(f"no box {box_id!r}")
        return info

    # ------------------------------------------------------------------ the contract

    async def create(self, spec: BoxSpec) -> Box:
        """Create and start a box; ``InvalidInput`` / ``Conflict`` before any container exists."""
        check_box_id(spec.box_id)
        memory_mib, cpus, _pids = resolve_limits(
            spec, memory_mib=self.memory_mib, cpus=self.cpus
        )  # pids: no CLI option, not enforced (README)
        env_text = c.env_file_text(spec.env)
        tar = c.files_tar(spec.files) if spec.files else None  # path checks, before anything
        self._ensure_engine()
        async with self._create_lock:
            existing = await self._containers()
            if any(info.id == spec.box_id for info in existing):
                raise Conflict(f"a box or container named {spec.box_id!r} exists already")
            managed = c.managed_only(existing)
            if len(managed) >= self.max_boxes:
                raise Conflict(
                    f"max_boxes ({self.max_boxes}) reached: destroy a box first, or raise "
                    "[plugin.runtime-apple] max_boxes"
                )
            argv_of = lambda env_file: c.create_argv(  # noqa: E731
                self.binary, spec, env_file, memory_mib=memory_mib, cpus=cpus, network=self.network
            )
            await self._create_container(spec, env_text, argv_of)
        try:
            await self._start(spec)
            if tar is not None:
                done = await self._run(c.inject_argv(self.binary, spec.box_id), stdin=tar)
                c.raise_for(spec.box_id, "file injection into", done.exit_code, done.err)
            return await self.get(spec.box_id)
        except BaseException:
            await self._remove_quietly(spec.box_id)
            raise

    async def _create_container(
        self, spec: BoxSpec, env_text: str, argv_of: Callable[[str | None], list[str]]
    ) -> None:
        secrets = tuple(spec.env.values())
        with tempfile.TemporaryDirectory(prefix="valetkey-env-") as folder:
            env_file: str | None = None
            if spec.env:
                path = Path(folder) / "box.env"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(env_text)
                env_file = str(path)
            # the folder (and the file in it) is removed as soon as 'create' returned
            done = await self._run(argv_of(env_file))
        if done.exit_code != 0:
            message = c.error_line(done.err)
            for value in secrets:
                if value:
                    message = message.replace(value, "[REDACTED]")
            if "exist" in message.lower():
                raise Conflict(f"a container named {spec.box_id!r} exists already")
            raise PluginError(
                f"container create {spec.box_id!r} failed (exit {done.exit_code}): {message}"
            )

    async def _start(self, spec: BoxSpec) -> None:
        if not spec.stdin_open:
            done = await self._run(
                c.start_argv(self.binary, spec.box_id, interactive=False),
                timeout=self.start_timeout,
            )
            c.raise_for(spec.box_id, "start of", done.exit_code, done.err)
            return
        self._ensure_engine()
        process = await self.executor.spawn(
            c.start_argv(self.binary, spec.box_id, interactive=True)
        )
        attached = _Attached(process)
        attached.reader = asyncio.create_task(self._drain(attached))
        self._attached[spec.box_id] = attached
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while True:
            if process.returncode is not None:
                # the CLI ends with the main process (its exit code is the process's): a box
                # whose command finished at once is still a box; an 'Error:' line is a failure
                if attached.reader is not None:
                    await attached.reader
                self._attached.pop(spec.box_id, None)
                stderr = attached.stderr_tail.decode("utf-8", "replace")
                if "Error:" in stderr or await self._inspect(spec.box_id) is None:
                    raise PluginError(
                        f"container start {spec.box_id!r} failed (exit {process.returncode}): "
                        f"{c.error_line(stderr)}"
                    )
                return
            info = await self._inspect(spec.box_id)
            if info is not None and info.status == "running":
                return
            if asyncio.get_running_loop().time() > deadline:
                raise PluginError(
                    f"box {spec.box_id!r} did not reach 'running' in {self.start_timeout} s"
                )
            await asyncio.sleep(0.1)

    @staticmethod
    async def _drain(attached: _Attached) -> None:
        stream = attached.process.stderr
        if stream is None:
            return
        while chunk := await stream.read(4096):
            attached.stderr_tail += chunk
            del attached.stderr_tail[:-4096]

    async def get(self, box_id: str) -> Box:
        """The managed box; ``NotFound`` otherwise."""
        return (await self._managed(box_id)).to_box(self.name)

    async def list(self) -> list[Box]:
        """Every container carrying ``valetkey.managed=1``, by id."""
        boxes = [info.to_box(self.name) for info in c.managed_only(await self._containers())]
        return sorted(boxes, key=lambda b: b.id)

    async def exec(self, box_id: str, command: str, *, timeout: float | None = None) -> ExecResult:
        """``sh -c command`` in the box; a non-zero exit is a result. Streams capped at 64 KiB."""
        await self._managed(box_id)
        self._ensure_engine()
        seconds = timeout if timeout is not None else self.exec_timeout
        done = await self.executor.run(
            c.exec_argv(self.binary, box_id, command),
            timeout=seconds,
            cap=EXEC_OUTPUT_LIMIT + 1,  # one byte more than kept: cap_output then sees the cut
            timeout_is_result=True,
        )
        stdout, out_cut = c.cap_output(done.stdout)
        stderr, err_cut = c.cap_output(done.stderr)
        if done.timed_out:
            return ExecResult(
                stdout, timed_out(stderr, seconds), EXEC_TIMEOUT_EXIT_CODE, out_cut or err_cut
            )
        return ExecResult(stdout, stderr, done.exit_code, truncated=out_cut or err_cut)

    async def logs(self, box_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the main process's output, ANSI stripped."""
        await self._managed(box_id)
        done = await self._run(c.logs_argv(self.binary, box_id, tail))
        c.raise_for(box_id, "logs of", done.exit_code, done.err)
        return c.strip_ansi(done.out)

    async def write_stdin(self, box_id: str, data: bytes) -> None:
        """Write to the main process's stdin through the ``start --interactive`` process kept
        since ``create``; ``Conflict`` when this process does not hold it (see module doc)."""
        await self._managed(box_id)
        attached = self._attached.get(box_id)
        if attached is None or attached.process.returncode is not None:
            raise Conflict(
                f"box {box_id!r}: its main process's stdin is not reachable from this valetkey "
                "process (the container CLI cannot attach to a running container; only the "
                "process that created the box with stdin open can write to it)"
            )
        stdin = attached.process.stdin
        if stdin is None:  # pragma: no cover - spawn always opens a pipe
            raise Conflict(f"box {box_id!r} has no stdin pipe")
        async with attached.lock:
            try:
                stdin.write(data)
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                raise Conflict(f"box {box_id!r}: its main process closed its stdin") from None

    async def destroy(self, box_id: str) -> None:
        """SIGTERM, SIGKILL after ``stop_timeout`` s, delete; ``NotFound`` if not managed."""
        await self._managed(box_id)
        done = await self._run(
            c.stop_argv(self.binary, box_id, self.stop_timeout),
            timeout=self.stop_timeout + self.command_timeout,
        )
        if done.exit_code != 0 and not c.is_already_stopped(done.err):
            c.raise_for(box_id, "stop of", done.exit_code, done.err)
        done = await self._run(c.delete_argv(self.binary, box_id))
        if done.exit_code != 0 and not c.is_not_found(done.err):
            done = await self._run(c.delete_argv(self.binary, box_id, force=True))
            if done.exit_code != 0 and not c.is_not_found(done.err):
                c.raise_for(box_id, "delete of", done.exit_code, done.err)
        await self._detach(box_id)

    async def is_alive(self, container_id: str) -> bool:
        """False when the container is gone or not running; ``RuntimeUnavailable`` if unsure."""
        info = await self._inspect(container_id)
        return info is not None and info.status == "running"

    async def close(self) -> None:
        """End the attached ``start --interactive`` processes (their boxes keep running, with
        stdin at end of file); idempotent."""
        for box_id in list(self._attached):
            await self._detach(box_id)

    # ------------------------------------------------------------------ helpers

    async def _detach(self, box_id: str) -> None:
        attached = self._attached.pop(box_id, None)
        if attached is None:
            return
        process = attached.process
        if process.stdin is not None:
            with contextlib.suppress(Exception):
                process.stdin.close()
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), 0.5)
            except TimeoutError:
                # SIGKILL, not SIGTERM: the CLI forwards signals it can catch to the box's main
                # process, and ending the attachment must not end the box
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if attached.reader is not None:
            with contextlib.suppress(Exception):
                await attached.reader

    async def _remove_quietly(self, box_id: str) -> None:
        """Undo a half-made box: force-delete the container, drop the attached process."""
        try:
            await self.executor.run(c.delete_argv(self.binary, box_id, force=True), timeout=30)
        except Exception as exc:  # the original error matters more
            log.warning("could not remove half-created box %r: %s", box_id, type(exc).__name__)
        await self._detach(box_id)
