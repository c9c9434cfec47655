"""Runs the plugins' background services in one task group; a crashing service is logged and
restarted after a pause, and cancellation at shutdown stops them all."""

from __future__ import annotations

import logging

import anyio

from ..kernel import Service

log = logging.getLogger("valetkey.serve")


async def supervise(service: Service, restart_delay: float = 5.0) -> None:
    """Run ``service`` until cancelled, restarting it after a failure."""
    while True:
        try:
            await service.fn()
            log.info("service %s (%s) returned; not restarting", service.name, service.plugin)
            return
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            log.exception(
                "service %s (%s) failed; restarting in %.0fs",
                service.name,
                service.plugin,
                restart_delay,
            )
            await anyio.sleep(restart_delay)
