"""``valetkey serve``: run the server until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys

from valetkey_hookspecs import InvalidInput

from . import state


def serve(*, host: str = "127.0.0.1", port: int = 8760, allow_host: list[str] | None = None) -> int:
    """Run the valetkey server: REST routes, the MCP endpoint at /mcp, /healthz and services.

    Parameters
    ----------
    host
        Address to listen on (loopback by default; anything else exposes valetkey to the network
        and needs --allow-host for the names clients use).
    port
        TCP port (0 picks a free one).
    allow_host
        A host name (no port) clients may send in the Host header besides 127.0.0.1 and
        localhost, e.g. valetkey.internal; repeatable. Every other name is refused on every
        route (DNS-rebinding protection).
    """
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--port {port} is not a TCP port (0-65535)")
    for name in allow_host or []:
        if not name or ":" in name or "/" in name:
            raise InvalidInput(f"--allow-host {name!r}: give a host name without port or scheme")
    import socket

    import anyio
    import uvicorn

    from ..serve.app import build_app

    kernel = state.kernel()

    async def preflight() -> None:  # a bad store or config is one line, before anything listens
        async with kernel:
            pass

    anyio.run(preflight)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) on accepted connections only
    # when the listening socket says TCP; without it every keep-alive response waits ~40 ms for
    # the client's delayed ACK (bench/broker_vend.py found it).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    if host not in ("127.0.0.1", "localhost", "::1") and not allow_host:
        sys.stderr.write(
            f"valetkey: warning: listening on {host} but only loopback Host names are accepted; "
            "add --allow-host NAME for the name clients use\n"
        )

    def ready() -> None:
        sys.stderr.write(f"valetkey serving on http://{host}:{bound} (MCP at /mcp)\n")
        sys.stderr.flush()

    app = build_app(kernel, allowed_hosts=allow_host, on_ready=ready)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", access_log=False, log_config=None
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was installed before it: make that a no-op so a graceful stop exits 0.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if server.started:
        sys.stderr.write("valetkey stopped\n")
        return 0
    sys.stderr.write("valetkey: error: the server failed to start (see the log above)\n")
    return 1


def _stopped(_signum: int, _frame: object) -> None:
    return None
