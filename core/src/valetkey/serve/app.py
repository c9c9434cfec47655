"""Composes the ASGI app of ``valetkey serve``.

``/healthz`` and ``/mcp`` belong to the kernel; every plugin route is mounted under its prefix.
The lifespan opens the kernel (store migrations), runs the MCP session manager and starts the
background services in one task group; leaving it cancels the services and closes the kernel.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import __version__
from ..kernel import Kernel
from .mcp import build_mcp_server
from .services import supervise

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def build_app(
    kernel: Kernel,
    *,
    allowed_hosts: list[str] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Any:
    """The Starlette app; call once per server start (an MCP session manager runs only once).

    :param allowed_hosts: host names (no port) besides loopback that clients may use in the
        ``Host`` header; every other name is refused on every route (DNS-rebinding protection).
    :param on_ready: called once the kernel is open and the services started.
    """
    import anyio
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    started = time.time()
    server = build_mcp_server(kernel)
    names = [*LOOPBACK_NAMES, *(allowed_hosts or [])]
    hosts = [f"{name}:*" for name in names] + ["[::1]:*"]
    security = TransportSecuritySettings(
        allowed_hosts=hosts,
        allowed_origins=[f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")],
    )
    mcp_app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security)
    services = kernel.services()
    mounts = [Mount(route.prefix, app=route.app) for route in kernel.routes()]

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "uptime_s": round(time.time() - started, 3),
                "services": [s.name for s in services],
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        async with kernel, server.session_manager.run(), anyio.create_task_group() as group:
            for service in services:
                group.start_soon(supervise, service, name=f"service:{service.name}")
            if on_ready is not None:
                on_ready()
            yield
            group.cancel_scope.cancel()

    return Starlette(
        routes=[Route("/healthz", healthz), *mcp_app.routes, *mounts],
        lifespan=lifespan,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=[*names, "[::1]"])],
    )
