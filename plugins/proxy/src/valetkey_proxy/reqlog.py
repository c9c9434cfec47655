"""The per-run request log: one JSON line per proxied request in ``logs/<run_id>.jsonl`` (0600).

The gate calls :meth:`RequestLog.record` on the event loop for every request, so recording only
appends to an in-memory buffer; a background thread writes the buffer out every
``flush_interval`` seconds (and :meth:`RequestLog.close` writes what is left). Entries arrive
already redacted — the gate shows every injected value as ``[REDACTED]`` — and are written as
given. :func:`follow` reads a log back for ``valetkey proxy log RUN [--follow]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from valetkey_hookspecs.files import private_dir

log = logging.getLogger("valetkey.proxy.reqlog")

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: a buffer this large is written out at once rather than at the next tick
_MAX_BUFFERED = 10_000


def log_name(run_id: str) -> str:
    """The file name for ``run_id``: the id itself when it is a safe file name, else a hash
    (a run id comes from a client and must never escape ``logs/``)."""
    if _SAFE.match(run_id) and ".." not in run_id:
        return f"{run_id}.jsonl"
    return "run-" + hashlib.sha256(run_id.encode()).hexdigest()[:24] + ".jsonl"


class RequestLog:
    """Buffered, append-only JSON-lines logs, one file per run, in ``folder``."""

    def __init__(self, folder: Path, flush_interval: float = 0.2) -> None:
        self.folder = folder
        self.flush_interval = flush_interval
        self._buffer: list[tuple[str, bytes]] = []
        self._mutex = threading.Lock()
        self._write_mutex = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def path_for(self, run_id: str) -> Path:
        """Where ``run_id``'s log lives."""
        return self.folder / log_name(run_id)

    def record(self, run_id: str, entry: dict[str, Any]) -> None:
        """Queue one entry (never blocks on disk); dropped after :meth:`close`."""
        try:
            line = json.dumps(entry, separators=(",", ":"), default=str).encode() + b"\n"
        except (TypeError, ValueError):  # not JSON-able: log the shape, not the values
            log.warning("request log entry for %s could not be encoded; dropped", run_id)
            return
        with self._mutex:
            if self._closed:
                return
            self._buffer.append((run_id, line))
            size = len(self._buffer)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="valetkey-reqlog", daemon=True
                )
                self._thread.start()
        if size >= _MAX_BUFFERED:
            self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()
            with self._mutex:
                if self._closed:
                    return

    def flush(self) -> None:
        """Write every buffered entry now."""
        with self._mutex:
            pending, self._buffer = self._buffer, []
        if not pending:
            return
        by_run: dict[str, list[bytes]] = {}
        for run_id, line in pending:
            by_run.setdefault(run_id, []).append(line)
        with self._write_mutex:
            private_dir(self.folder)
            for run_id, lines in by_run.items():
                try:
                    fd = os.open(
                        self.path_for(run_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
                    )
                    try:
                        os.write(fd, b"".join(lines))
                    finally:
                        os.close(fd)
                except OSError as exc:
                    log.warning("cannot write the request log of %s: %s", run_id, exc.strerror)

    def close(self) -> None:
        """Write what is buffered and stop the writer thread (idempotent)."""
        with self._mutex:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(5)
        self.flush()

    def follow(
        self, run_id: str, follow: bool = False, stop: Callable[[], bool] | None = None
    ) -> Iterator[dict[str, Any]]:
        """:func:`follow` on ``run_id``'s log in this folder."""
        return follow_log(self.path_for(run_id), follow=follow, stop=stop)


def resolve(folder: Path, path_or_run_id: str) -> Path:
    """A log file named by path, or by run id in ``folder``."""
    candidate = Path(path_or_run_id)
    if candidate.suffix == ".jsonl" and candidate.exists():
        return candidate
    return folder / log_name(path_or_run_id)


def follow_log(
    path: Path,
    *,
    follow: bool = False,
    poll: float = 0.2,
    stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the entries of ``path``; with ``follow``, keep waiting for new ones (like
    ``tail -f``) until ``stop()`` says so or the caller stops iterating. A torn last line is
    held back until it is complete; a line that is not JSON is skipped."""
    if not follow and not path.exists():
        raise FileNotFoundError(path)
    handle = None
    partial = b""
    try:
        while True:
            if handle is None:
                with contextlib.suppress(FileNotFoundError):
                    handle = path.open("rb")
            if handle is not None:
                chunk = handle.read()
                if chunk:
                    data = partial + chunk
                    *lines, partial = data.split(b"\n")
                    for raw in lines:
                        if not raw.strip():
                            continue
                        try:
                            entry = json.loads(raw)
                        except ValueError:
                            continue
                        if isinstance(entry, dict):
                            yield entry
                    continue
            if not follow or (stop is not None and stop()):
                return
            time.sleep(poll)
    finally:
        if handle is not None:
            handle.close()


def follow(
    path_or_run_id: str | Path,
    follow: bool = False,
    *,
    folder: Path | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """The entries of a request log named by path, or by run id (in ``folder``)."""
    if isinstance(path_or_run_id, Path) or folder is None:
        return follow_log(Path(path_or_run_id), follow=follow, stop=stop)
    return follow_log(resolve(folder, path_or_run_id), follow=follow, stop=stop)
