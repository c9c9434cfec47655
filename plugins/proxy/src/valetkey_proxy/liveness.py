"""Liveness: runs registered with a container id are removed when their container is gone.

Every ``interval`` seconds each such run's container is checked through the selected box
runtime (``kernel.runtime().is_alive``): ``False`` (confirmed gone or stopped) removes the run at
once; an exception is a transient failure, and :data:`MAX_FAILURES` in a row remove it; ``True``
resets the count. With no box runtime installed, liveness is off (one log line says so); runs
without a container id (``valetkey run`` on the host) are never checked — they unregister
themselves when their command exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from valetkey_hookspecs import BoxRuntime, ConfigError, KernelAPI, NotFound

from .runs import Registry, Run, process_alive

log = logging.getLogger("valetkey.proxy.liveness")

#: transient check failures in a row before a run is removed
MAX_FAILURES = 3


class LivenessChecker:
    """Checks runs' containers; ``runtime`` (for tests) overrides ``kernel.runtime()``."""

    def __init__(
        self,
        registry: Registry,
        *,
        kernel: KernelAPI | None = None,
        runtime: BoxRuntime | None = None,
        interval: float = 30.0,
        timeout: float = 10.0,
        on_removed: Callable[[Run, str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.kernel = kernel
        self._runtime = runtime
        self.interval = interval
        self.timeout = timeout
        self.on_removed = on_removed
        #: False once we know no box runtime is installed
        self.enabled = True

    def runtime(self) -> BoxRuntime | None:
        """The box runtime, or None (and liveness off) when none is installed."""
        if self._runtime is not None:
            return self._runtime
        if self.kernel is None or not self.enabled:
            return None
        try:
            self._runtime = self.kernel.runtime()
        except (ConfigError, NotFound) as exc:
            self.enabled = False
            log.warning("liveness checks are off: no box runtime (%s)", exc)
            return None
        return self._runtime

    async def check_once(self) -> list[Run]:
        """Check every run that has a container id (through the box runtime) or a client
        process (``valetkey run``); return the runs removed."""
        removed = self._check_clients()
        runs = [run for run in self.registry if run.container_id]
        if not runs:
            return removed
        runtime = self.runtime()
        if runtime is None:
            return removed
        results = await asyncio.gather(
            *(self._check(runtime, run) for run in runs), return_exceptions=True
        )
        for run, result in zip(runs, results, strict=True):
            if self.registry.lookup(run.token) is not run:
                continue  # unregistered or replaced while we were checking
            if result is True:
                run.liveness_failures = 0
                continue
            if result is False:
                reason = f"container {run.container_id} is gone"
            else:
                run.liveness_failures += 1
                if run.liveness_failures < MAX_FAILURES:
                    log.warning(
                        "liveness check of run %s failed (%d/%d): %s",
                        run.run_id,
                        run.liveness_failures,
                        MAX_FAILURES,
                        _describe(result),
                    )
                    continue
                reason = f"{MAX_FAILURES} liveness checks in a row failed"
            self.registry.remove(run.token)
            removed.append(run)
            log.warning("run %s removed: %s", run.run_id, reason)
            if self.on_removed is not None:
                self.on_removed(run, reason)
        return removed

    def _check_clients(self) -> list[Run]:
        removed = []
        for run in self.registry:
            pid = run.spec.client_pid
            if run.container_id or not pid or process_alive(pid, run.spec.client_started):
                continue
            self.registry.remove(run.token)
            removed.append(run)
            reason = f"its process {pid} is gone"
            log.warning("run %s removed: %s", run.run_id, reason)
            if self.on_removed is not None:
                self.on_removed(run, reason)
        return removed

    async def _check(self, runtime: BoxRuntime, run: Run) -> bool:
        assert run.container_id is not None
        return bool(await asyncio.wait_for(runtime.is_alive(run.container_id), self.timeout))

    async def run_forever(self) -> None:
        """Check every ``interval`` seconds until cancelled (or liveness turns out to be off)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # a bug here must not stop the daemon
                log.exception("liveness check crashed")


def _describe(error: object) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return repr(error)
