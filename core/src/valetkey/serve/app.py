"""Composes the ASGI app of ``valetkey serve``.

``/healthz`` and ``/mcp`` belong to the kernel; every plugin route is mounted under its prefix.
The lifespan opens the kernel (store migrations), runs the MCP session manager and starts the
background services in one task group; leaving it cancels the services and closes the kernel.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from .. import __version__
from ..kernel import Kernel
from .mcp import build_mcp_server
from .services import supervise


def build_app(kernel: Kernel, *, allowed_hosts: list[str] | None = None) -> Any:
    """The Starlette app; call once per server start (an MCP session manager runs only once)."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    started = time.time()
    server = build_mcp_server(kernel)
    security = None
    if allowed_hosts:
        from mcp.server.transport_security import TransportSecuritySettings

        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *allowed_hosts]
        security = TransportSecuritySettings(
            allowed_hosts=hosts,
            allowed_origins=[f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts],
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
            yield
            group.cancel_scope.cancel()

    return Starlette(
        routes=[Route("/healthz", healthz), *mcp_app.routes, *mounts],
        lifespan=lifespan,
    )
