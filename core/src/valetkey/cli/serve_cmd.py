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
        Address to listen on (loopback by default; anything else exposes valetkey to the network).
    port
        TCP port (0 picks a free one).
    allow_host
        Extra Host header value the MCP endpoint accepts (DNS-rebinding protection), e.g.
        valetkey.internal:*; repeatable.
    """
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--port {port} is not a TCP port (0-65535)")
    import socket

    import uvicorn

    from ..serve.app import build_app

    kernel = state.kernel()
    app = build_app(kernel, allowed_hosts=allow_host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    sys.stderr.write(f"valetkey serving on http://{host}:{bound} (MCP at /mcp)\n")
    sys.stderr.flush()
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
    return 1


def _stopped(_signum: int, _frame: object) -> None:
    return None
