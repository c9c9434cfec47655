"""The proxy daemon: one long-lived process per ``$VALETKEY_HOME`` (``valetkey proxy daemon``).

:func:`serve_daemon` opens the kernel and builds, in this order: the run registry and the
gate; the local CA (its key sealed with the kernel's sealer); the proxy engine on
``listen_host:port``; the runs persisted in ``runs.json``, each re-prepared through the gate
with its old token (a run that fails — a revoked grant, a deleted connection — is skipped, and
reported in the log and in health as ``restore_failures``); the management API on
``daemon.sock`` (0600 before it accepts anything); then it writes ``daemon.json``, arms the
idle timer and starts liveness checks.

It stops gracefully on SIGTERM/SIGINT, ``POST /v1/shutdown`` or idle timeout: it stops
accepting, closes the proxy, flushes ``runs.json`` and the request logs, and removes its lock
info and socket (only if they are still its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from valetkey_hookspecs import (
    Conflict,
    InvalidInput,
    KernelAPI,
    NotFound,
    Revoked,
    ValetkeyError,
)
from valetkey_hookspecs.redaction import redact_text

from . import lockfile, runsfile
from .api import DaemonState, build_api
from .config import ProxyConfig
from .idle import IdleTimer
from .liveness import LivenessChecker
from .paths import ProxyPaths
from .reqlog import RequestLog
from .runs import Registry, Run, RunSpec

log = logging.getLogger("valetkey.proxy.daemon")


def version() -> str:
    """The installed valetkey-proxy version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("valetkey-proxy")
    except PackageNotFoundError:
        return "unknown"


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, 0600 before it accepts anything. A socket file
    nobody answers on (left by a killed daemon) is replaced; a live one is a :class:`Conflict`."""
    if path.exists() or path.is_symlink():
        if lockfile.socket_answers(path):
            raise Conflict(f"another proxy daemon is already listening on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _uvicorn_server(app: Any) -> Any:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn without its signal handling: the daemon owns SIGTERM/SIGINT."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, log_config=None
    )
    return _Server(config)


def _proxy_host(listen_host: str) -> str:
    if listen_host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming it, not binding it
        return "127.0.0.1"
    return listen_host


async def restore(
    gate: Any, registry: Registry, specs: list[RunSpec], concurrency: int = 16
) -> tuple[list[dict[str, str]], list[RunSpec]]:
    """Re-prepare persisted runs with their tokens (several at once). Returns one
    ``{"run_id", "error"}`` per failure, and the specs worth keeping in ``runs.json`` for the
    next start: those that failed for a reason that may pass (a provider down, a grant waiting
    for re-auth), not those whose grant or connection is gone."""
    failures: list[dict[str, str]] = []
    keep: list[RunSpec] = []
    gate_limit = asyncio.Semaphore(concurrency)

    async def one(spec: RunSpec) -> None:
        async with gate_limit:
            try:
                run: Run = await gate.prepare(spec, spec.auth_token)
            except ValetkeyError as exc:
                message = redact_text(str(exc))
                failures.append({"run_id": spec.run_id, "error": message})
                log.warning("run %s not restored: %s", spec.run_id or "?", message)
                if not isinstance(exc, NotFound | InvalidInput | Revoked):
                    keep.append(spec)
                return
            registry.add(run)

    await asyncio.gather(*(one(spec) for spec in specs))
    return failures, keep


def _previous_port(paths: ProxyPaths) -> int:
    """The port of a daemon that died without cleaning up (its ``daemon.json`` is left), when it
    had runs to restore; 0 otherwise."""
    stale = lockfile.read(paths.info)
    if stale is None or not paths.runs.exists() or lockfile.pid_alive(stale.pid):
        return 0
    return stale.proxy_port


async def serve_daemon(kernel: KernelAPI, *, ready: asyncio.Event | None = None) -> None:
    """Run the daemon until it is told to stop (see the module docstring)."""
    from . import aws, mcp_relay
    from .aws import AwsCredentials
    from .ca import LocalCA
    from .gate import Gate
    from .mcp_relay import McpRelay
    from .routing import RouteTable, ServiceRouter
    from .server import ProxyServer
    from .upstream import upstream_ssl_context

    paths = ProxyPaths.for_home(kernel.home).ensure()
    config: ProxyConfig = kernel.plugin_config("proxy") or ProxyConfig()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    pid = os.getpid()

    async with kernel:  # type: ignore[attr-defined]
        if lockfile.socket_answers(paths.sock):
            raise Conflict(f"another proxy daemon is already listening on {paths.sock}")
        registry = Registry()
        request_log = RequestLog(paths.logs)
        gate = Gate(kernel, registry, config, request_log)
        upstream_ssl = upstream_ssl_context(config.extra_ca_file or None)
        # local endpoints: an aws grant's container credentials, remote MCP servers
        aws_credentials = AwsCredentials(kernel, config)
        mcp = McpRelay(kernel, upstream_ssl, config=config, vend=gate.vend)
        gate.local_handlers[aws.PREFIX] = aws_credentials.handle
        gate.local_handlers[mcp_relay.PREFIX] = mcp.handle
        routes = RouteTable()
        gate.router = ServiceRouter(routes, upstream_ssl)
        registry.subscribe(
            lambda event, run: aws_credentials.forget(run) if event == "removed" else None
        )
        ca = await asyncio.to_thread(LocalCA.load_or_create, paths.ca, kernel.sealer)
        # runs come back before the proxy listens: a restored token is never refused (407)
        specs, problems = runsfile.load(paths.runs)
        for problem in problems:
            log.warning("%s", problem)
        restore_failures, unrestored = await restore(gate, registry, specs)
        if specs:
            log.warning("restored %d of %d run(s) from %s", len(registry), len(specs), paths.runs)

        def make_proxy(port: int) -> ProxyServer:
            return ProxyServer(
                gate,
                ca,
                host=config.listen_host,
                port=port,
                upstream_ssl=upstream_ssl,
                max_request_body=config.max_request_body,
            )

        # after a crash, agents still hold proxy URLs with the old port: take it back if free
        previous_port = _previous_port(paths) if not config.port else 0
        proxy = make_proxy(config.port or previous_port)
        try:
            await proxy.start()
        except OSError as exc:
            if not previous_port:
                raise
            log.warning("previous proxy port %d is taken (%s); using another", previous_port, exc)
            proxy = make_proxy(0)
            await proxy.start()
        state = DaemonState(
            registry=registry,
            gate=gate,
            version=version(),
            started_at=datetime.now(UTC).isoformat(),
            proxy_port=proxy.port,
            proxy_host=_proxy_host(config.listen_host),
            ca_cert=str(ca.cert_path),
            ca_bundle=str(ca.bundle_path),
            on_shutdown=stop.set,
            routes=routes,
        )
        state.restore_failures = restore_failures
        server = None
        serving: asyncio.Task[None] | None = None
        liveness_task: asyncio.Task[None] | None = None
        persist: runsfile.RunsFile | None = None
        sock: socket.socket | None = None
        sock_ino: int | None = None
        try:

            def persisted() -> list[RunSpec]:
                live = [r.persisted() for r in registry]
                tokens = {r.token for r in registry}
                return live + [s for s in unrestored if s.auth_token not in tokens]

            persist = runsfile.RunsFile(paths.runs, persisted, config.persist_debounce)
            registry.subscribe(lambda _event, _run: persist.changed() if persist else None)

            sock = bind_unix(paths.sock)
            sock_ino = os.stat(paths.sock).st_ino
            server = _uvicorn_server(build_api(state))
            serving = loop.create_task(server.serve(sockets=[sock]))
            while not server.started:
                if serving.done():
                    await serving  # raises why it failed
                    raise RuntimeError("the management API stopped while starting")
                await asyncio.sleep(0.01)

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            idle = IdleTimer(config.idle_timeout, stop.set)
            idle.watch(registry)
            checker = LivenessChecker(registry, kernel=kernel, interval=config.liveness_interval)
            liveness_task = loop.create_task(checker.run_forever())
            lockfile.write(
                paths.info,
                lockfile.LockInfo(
                    pid=pid,
                    proxy_port=proxy.port,
                    sock_path=str(paths.sock),
                    started_at=state.started_at,
                    version=state.version,
                ),
            )
            log.warning(
                "proxy daemon %s (pid %d) listening: proxy on %s:%d, API on %s",
                state.version,
                pid,
                config.listen_host,
                proxy.port,
                paths.sock,
            )
            if ready is not None:
                ready.set()
            await stop.wait()
            log.warning("proxy daemon stopping")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            if liveness_task is not None:
                liveness_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await liveness_task
            if server is not None and serving is not None:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(serving, 10)
            await proxy.close()
            await mcp.aclose()
            await gate.router.aclose()
            aws_credentials.close()
            if persist is not None:
                await persist.flush()
            request_log.close()
            lockfile.remove(paths.info, pid=pid)
            if sock is not None:
                sock.close()
                with contextlib.suppress(OSError):
                    if os.stat(paths.sock).st_ino == sock_ino:
                        paths.sock.unlink()
            log.warning("proxy daemon stopped")


def run_daemon(kernel: KernelAPI) -> None:
    """Run :func:`serve_daemon` on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_daemon(kernel))
        return
    uvloop.run(serve_daemon(kernel))
