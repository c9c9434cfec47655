"""The background service of ``valetkey serve``: restore box sessions at start-up (dropping
those whose box is gone), then reap boxes never signed in every ``reap_every`` seconds."""

from __future__ import annotations

import asyncio
import logging

from valetkey_hookspecs import KernelAPI, ValetkeyError
from valetkey_hookspecs.redaction import redact_text

from .manager import manager_for

log = logging.getLogger("valetkey.boxes")


async def reaper(kernel: KernelAPI) -> None:
    """Restore, then reap until cancelled. A runtime that is down is retried, not fatal."""
    manager = manager_for(kernel)
    restored = False
    while True:
        try:
            if not restored:
                kept, dropped = await manager.restore()
                restored = True
                log.info("boxes: %d session(s) restored, %d dropped", len(kept), len(dropped))
            await manager.reap()
        except ValetkeyError as exc:
            log.warning("boxes: %s", redact_text(str(exc)))
        await asyncio.sleep(manager.config.reap_every)
