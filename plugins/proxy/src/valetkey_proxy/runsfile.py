"""``runs.json``: the registered runs, so a restarted daemon gets them back with the same tokens.

The file is ``{"version": 1, "runs": [RunSpec, ...]}``: owner, run id, token, grant *names*,
policy, container id — never a credential (grants are re-resolved through the broker on
restore). It is written atomically and 0600 (the run tokens are proxy-local secrets),
debounced (``persist_debounce``: a burst of registrations is one write) and flushed on shutdown.
A legacy bare-array file (``[RunSpec, ...]``) loads too; an entry that does not parse is
skipped and reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from valetkey_hookspecs.files import atomic_write

from .runs import RunSpec

log = logging.getLogger("valetkey.proxy.runsfile")

VERSION = 1


def encode(specs: list[RunSpec]) -> bytes:
    """The file's bytes for these runs."""
    return (
        msgspec.json.format(msgspec.json.encode({"version": VERSION, "runs": specs}), indent=1)
        + b"\n"
    )


def load(path: Path) -> tuple[list[RunSpec], list[str]]:
    """The runs in ``path`` (none when it does not exist) and a problem per skipped entry."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], []
    try:
        data: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return [], [f"{path} is not valid JSON; no runs restored"]
    if isinstance(data, dict):
        version = data.get("version")
        if version != VERSION:
            return [], [f"{path}: unsupported version {version!r}; no runs restored"]
        entries = data.get("runs")
    else:
        entries = data  # legacy: a bare array
    if not isinstance(entries, list):
        return [], [f"{path}: 'runs' is not a list; no runs restored"]
    specs: list[RunSpec] = []
    problems: list[str] = []
    for index, entry in enumerate(entries):
        try:
            specs.append(msgspec.convert(entry, RunSpec))
        except msgspec.ValidationError as exc:
            problems.append(f"{path}: run #{index} skipped: {exc}")
    return specs, problems


class RunsFile:
    """Debounced, ordered writes of ``snapshot()`` to ``path`` (use on one event loop)."""

    def __init__(
        self, path: Path, snapshot: Callable[[], list[RunSpec]], debounce: float = 0.2
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        self.debounce = debounce
        #: how many times the file was written (tests check that bursts coalesce)
        self.writes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    def changed(self) -> None:
        """Something changed: write within ``debounce`` seconds (one write per burst)."""
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.save())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def save(self) -> None:
        """Write the current runs now (the snapshot is taken in order, under the lock, so an
        older snapshot never overwrites a newer one)."""
        async with self._lock:
            data = encode(self.snapshot())
            try:
                await asyncio.to_thread(atomic_write, self.path, data)
            except OSError as exc:
                log.error("cannot write %s: %s", self.path, exc.strerror)
                return
            self.writes += 1

    async def flush(self) -> None:
        """Cancel a pending debounced write and write now (on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.save()
