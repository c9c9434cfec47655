"""The one place a ``container`` process is started: argv in, exit code and capped output out.

``Executor.run`` waits (with a timeout that kills the CLI process); ``Executor.spawn`` starts a
process that stays (``container start --interactive``, whose stdin is the box's stdin). Tests
swap in an executor that records argv, or put a fake ``container`` program on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from valetkey_hookspecs.errors import PluginError, RuntimeUnavailable

#: read at most this much of any stream (the rest is drained and dropped)
DEFAULT_CAP = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished CLI call. ``*_truncated``: more than the cap was written and dropped."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    #: killed after its timeout (``run(..., timeout_is_result=True)``)
    timed_out: bool = False

    @property
    def out(self) -> str:
        """stdout as text."""
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def err(self) -> str:
        """stderr as text."""
        return self.stderr.decode("utf-8", errors="replace")


class CommandTimeout(PluginError):
    """The CLI call did not finish in time and was killed."""


@dataclass
class _Sink:
    """What a reader kept so far (survives the reader being cancelled)."""

    data: bytearray
    truncated: bool = False


async def _read_capped(stream: asyncio.StreamReader | None, cap: int, sink: _Sink) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        room = cap - len(sink.data)
        if room > 0:
            sink.data += chunk[:room]
        if len(chunk) > max(room, 0):
            sink.truncated = True


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, a second's grace, SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 1.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class Executor:
    """Runs the CLI with ``asyncio`` subprocesses (never through a shell)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        #: environment of the CLI processes (None: this process's); never carries box env values
        self.env = env

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = 60.0,
        cap: int = DEFAULT_CAP,
        timeout_is_result: bool = False,
    ) -> Completed:
        """Run ``argv`` to completion. Past ``timeout`` the CLI gets SIGTERM (which it forwards
        to what it runs), then SIGKILL a second later; then ``CommandTimeout`` is raised, or,
        with ``timeout_is_result``, the output so far comes back with ``timed_out`` set.
        ``RuntimeUnavailable`` if the program is missing."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
            )
        except FileNotFoundError:
            raise RuntimeUnavailable(
                f"the container CLI {argv[0]!r} was not found: install Apple's container "
                "(https://github.com/apple/container) on macOS"
            ) from None

        async def feed() -> None:
            if proc.stdin is None or stdin is None:
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()

        out, err = _Sink(bytearray()), _Sink(bytearray())
        tasks = [
            asyncio.ensure_future(feed()),
            asyncio.ensure_future(_read_capped(proc.stdout, cap, out)),
            asyncio.ensure_future(_read_capped(proc.stderr, cap, err)),
        ]
        waiter = asyncio.ensure_future(proc.wait())
        timed_out = False
        try:
            _, pending = await asyncio.wait([*tasks, waiter], timeout=timeout)
            if pending:
                timed_out = True
                await _stop(proc)
                # the CLI is gone; its pipes end unless something it started still holds them
                await asyncio.wait(tasks, timeout=2.0)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            for task in [*tasks, waiter]:
                if not task.done():
                    task.cancel()
        if timed_out and not timeout_is_result:
            raise CommandTimeout(
                f"'{argv[0]} {argv[1] if len(argv) > 1 else ''}' did not finish in {timeout} s"
            )
        code = proc.returncode if proc.returncode is not None else -9
        return Completed(
            tuple(argv), code, bytes(out.data), bytes(err.data), out.truncated, err.truncated,
            timed_out,
        )  # fmt: skip

    async def spawn(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        """Start ``argv`` with a stdin pipe and output dropped (it is in the container's log)."""
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                # its own process group: a Ctrl-C of valetkey does not reach the attached CLI
                start_new_session=os.name == "posix",
            )
        except FileNotFoundError:
            raise RuntimeUnavailable(f"the container CLI {argv[0]!r} was not found") from None
