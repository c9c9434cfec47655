"""Fixtures: a recording executor that replays recorded outputs (no process started), and a
FAKE ``container`` program on PATH (``fake_container.py``) for the executor path and the kit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from valetkey_runtime_apple.executor import Completed, Executor
from valetkey_runtime_apple.runtime import AppleRuntime

HERE = Path(__file__).parent
RECORDED = HERE / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


Responder = Callable[[list[str], bytes | None], Completed | None]


class RecordingExecutor(Executor):
    """Records every argv; answers from ``responders`` (first non-None wins), else exit 0."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.stdins: list[bytes | None] = []
        self.spawned: list[list[str]] = []
        self.responders: list[Responder] = []

    def on(self, verb: str, stdout: str = "", stderr: str = "", code: int = 0) -> None:
        def respond(argv: list[str], _stdin: bytes | None) -> Completed | None:
            if argv[1] != verb:
                return None
            return Completed(tuple(argv), code, stdout.encode(), stderr.encode())

        self.responders.insert(0, respond)

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = 60.0,
        cap: int = 0,
    ) -> Completed:
        self.calls.append(list(argv))
        self.stdins.append(stdin)
        for respond in self.responders:
            if (done := respond(list(argv), stdin)) is not None:
                return done
        return Completed(tuple(argv), 0, b"", b"")

    async def spawn(self, argv: Sequence[str]):  # type: ignore[override]
        self.spawned.append(list(argv))
        raise AssertionError("spawn not expected in this test")

    def verbs(self) -> list[str]:
        return [argv[1] for argv in self.calls]


@pytest.fixture
def executor() -> RecordingExecutor:
    return RecordingExecutor()


@pytest.fixture
def recorded_runtime(executor: RecordingExecutor) -> AppleRuntime:
    """The runtime over the recording executor; 'container' is resolved to this Python (any
    existing program will do: the executor never starts it)."""
    return AppleRuntime(binary=sys.executable, executor=executor, require_macos=False)


class FakeCli:
    """Where the fake keeps its state, and what it was called with."""

    def __init__(self, state: Path, bindir: Path) -> None:
        self.state = state
        self.bindir = bindir
        self.binary = str(bindir / "container")

    def argv_log(self) -> list[list[str]]:
        path = self.state / "argv.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def kill_all(self) -> None:
        base = self.state / "containers"
        for pid_file in base.glob("*/pid") if base.exists() else []:
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCli]:
    """A FAKE ``container`` first on PATH (a stand-in for Apple's CLI, which needs macOS)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "container"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_container.py"}" "$@"\n')
    wrapper.chmod(0o755)
    state = tmp_path / "fake-state"
    monkeypatch.setenv("FAKE_CONTAINER_STATE", str(state))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cli = FakeCli(state, bindir)
    yield cli
    cli.kill_all()


@pytest.fixture
async def fake_runtime(fake_cli: FakeCli, anyio_backend: str) -> Iterator[AppleRuntime]:
    runtime = AppleRuntime(binary="container", require_macos=False, start_timeout=20)
    yield runtime
    await runtime.close()
