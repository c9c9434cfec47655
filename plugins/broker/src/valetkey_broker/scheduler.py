"""The refresh-ahead service of ``valetkey serve``: every ``schedule_every`` seconds, refresh the
credentials that will expire within the lead, soonest first, so vends almost always find a warm
token. Connections that are not ACTIVE are skipped by the store's ``due`` query; rate-limited
providers are left for the next pass."""

from __future__ import annotations

import logging

import anyio

from valetkey_hookspecs import KernelAPI

from .broker import Broker, serving_broker

log = logging.getLogger("valetkey.broker.scheduler")


async def refresh_ahead(kernel: KernelAPI) -> None:
    """Run until cancelled."""
    broker = serving_broker(kernel)
    while True:
        started = anyio.current_time()
        await run_passes(broker, budget=broker.config.schedule_every * 0.8)
        elapsed = anyio.current_time() - started
        await anyio.sleep(max(1.0, broker.config.schedule_every - elapsed))


async def run_passes(broker: Broker, budget: float) -> int:
    """Passes of ``batch_size`` back to back while the last one was full and time is left, so a
    large store is kept warm (one pass a period would cap refreshes at batch_size a period)."""
    deadline = anyio.current_time() + budget
    total = 0
    while True:
        report = await broker.refresh_due()
        total += len(report.refreshed)
        if any(report.as_dict().values()):
            log.info(
                "refresh-ahead: %d refreshed, %d rate-limited, %d need re-auth, %d failed",
                len(report.refreshed),
                len(report.rate_limited),
                len(report.needs_reauth),
                len(report.failed),
            )
        if len(report.refreshed) < broker.config.batch_size or anyio.current_time() > deadline:
            return total
