"""The background service of ``valetkey serve``: restore box sessions at start-up (dropping
those whose box is gone), then reap boxes never signed in every ``reap_every`` seconds.

Several servers on one database (store-postgres) share the reaper: a pass runs only in the
server holding the ``boxes:reaper`` lease (taken for two periods, renewed by its holder), so a
stale box is destroyed once, and another server takes over when the holder dies."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets

from valetkey_hookspecs import KernelAPI, ValetkeyError
from valetkey_hookspecs.redaction import redact_text

from .manager import manager_for

log = logging.getLogger("valetkey.boxes")

#: the lease that makes one server of many run reaper passes
REAPER_LEASE = "boxes:reaper"


async def reaper(kernel: KernelAPI) -> None:
    """Restore, then reap until cancelled. A runtime that is down is retried, not fatal."""
    manager = manager_for(kernel)
    holder = f"reaper-{os.getpid()}-{secrets.token_hex(4)}"
    restored = False
    while True:
        try:
            if not restored:
                kept, dropped = await manager.restore()
                restored = True
                log.info("boxes: %d session(s) restored, %d dropped", len(kept), len(dropped))
            if await kernel.store.leases.acquire(
                REAPER_LEASE, holder, manager.config.reap_every * 2
            ):
                await manager.reap()
        except ValetkeyError as exc:
            log.warning("boxes: %s", redact_text(str(exc)))
        await asyncio.sleep(manager.config.reap_every)
