"""Idle shutdown: the daemon exits ``idle_timeout`` seconds after its last run leaves.

Starting with no runs arms the timer too (a daemon nobody registers with goes away); any
registration cancels it. Wire it to the registry with :meth:`IdleTimer.watch`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .runs import Registry, Run

log = logging.getLogger("valetkey.proxy.idle")


class IdleTimer:
    """Calls ``on_idle`` once the registry has stayed empty for ``timeout`` seconds."""

    def __init__(self, timeout: float, on_idle: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_idle = on_idle
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        """True while counting down."""
        return self._handle is not None

    def arm(self) -> None:
        """Start (or restart) the countdown."""
        self.cancel()
        self._handle = asyncio.get_running_loop().call_later(self.timeout, self._fire)

    def cancel(self) -> None:
        """Stop counting down."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        log.warning("no runs for %.0f s: the proxy daemon is stopping", self.timeout)
        self.on_idle()

    def watch(self, registry: Registry) -> None:
        """Arm now if ``registry`` is empty; cancel on every registration, re-arm when it
        becomes empty."""

        def listener(event: str, _run: Run) -> None:
            if event == "added":
                self.cancel()
            elif event == "removed" and len(registry) == 0:
                self.arm()

        registry.subscribe(listener)
        if len(registry) == 0:
            self.arm()
