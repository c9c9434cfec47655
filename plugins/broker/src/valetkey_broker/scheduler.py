"""The refresh-ahead service of ``valetkey serve``: every ``schedule_every`` seconds, refresh the
credentials that will expire within the lead, soonest first, so vends almost always find a warm
token. Connections that are not ACTIVE are skipped by the store's ``due`` query; rate-limited
providers are left for the next pass."""

from __future__ import annotations

import logging

import anyio

from valetkey_hookspecs import KernelAPI

from .broker import Broker

log = logging.getLogger("valetkey.broker.scheduler")


async def refresh_ahead(kernel: KernelAPI) -> None:
    """Run until cancelled."""
    broker = Broker(kernel, kernel.plugin_config("broker"), background=True)
    while True:
        report = await broker.refresh_due()
        if any(report.as_dict().values()):
            log.info(
                "refresh-ahead: %d refreshed, %d rate-limited, %d need re-auth, %d failed",
                len(report.refreshed),
                len(report.rate_limited),
                len(report.needs_reauth),
                len(report.failed),
            )
        await anyio.sleep(broker.config.schedule_every)
