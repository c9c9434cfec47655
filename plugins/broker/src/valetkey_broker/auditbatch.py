"""Group commit for the audit appends on the vend path.

Every vend is audited before its token is returned, and an append is a write transaction (the
chain needs the head). Under load, one transaction per vend would dominate the server's time; so
appends queue up while a batch is being written, and the next batch writes them all in one
``append_many`` — each vend still waits until its own event is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from valetkey_hookspecs import AuditEntry, Store, ValetkeyError


class AuditBatcher:
    """Appends audit entries, many concurrent ones per transaction."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store
        self._queue: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def append(self, entry: AuditEntry) -> None:
        """Return once ``entry`` is stored (raises what the store raised)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((entry, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write())
        await done

    async def _write(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._store().audit.append_many([entry for entry, _ in batch])
                except Exception as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:  # cancelled (shutdown): nobody may wait forever
            left, self._queue = self._queue, []
            for _, done in left:
                if not done.done():
                    done.set_exception(ValetkeyError("the audit writer stopped"))
