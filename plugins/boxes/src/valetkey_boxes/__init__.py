"""boxes: the box manager — sandbox containers driven over MCP (``create_box``, ``exec_box``, …),
an auth page that keeps OAuth codes out of chat (``/auth/{token}``), sign-in before activation
(OIDC, ``/login``), the fleet admin UI (``/admin``), lifecycle hooks, grants through the proxy, a
reaper for boxes never signed in, ``valetkey box``, and hub/spoke clustering (``/spoke/connect``,
``valetkey spoke``).

Only hook implementations live here; everything else is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import hookimpl

from .config import BoxesConfig

if TYPE_CHECKING:
    from valetkey_hookspecs import KernelAPI
    from valetkey_hookspecs.interfaces import RegisterMcpTool, RegisterRoute, RegisterService


@hookimpl
def valetkey_config_schema() -> type[Any]:
    return BoxesConfig


@hookimpl
def valetkey_register_commands(app: Any) -> None:
    app.command(
        "valetkey_boxes.cli:box_app",
        name="box",
        help="Sandbox boxes: create, list, inspect, exec in, destroy.",
    )
    app.command(
        "valetkey_boxes.spoke_cli:spoke_app",
        name="spoke",
        help="Fleet: join tokens, enrolled spokes, and 'spoke run'.",
    )


@hookimpl
def valetkey_register_mcp_tools(register: RegisterMcpTool, kernel: KernelAPI) -> None:
    from .tools import register_tools

    register_tools(register, kernel)


@hookimpl
def valetkey_register_routes(register: RegisterRoute, kernel: KernelAPI) -> None:
    from .admin import build_admin_app
    from .authpage import build_auth_app
    from .websession import build_login_app

    register("/auth", build_auth_app(kernel))
    register("/login", build_login_app(kernel))
    register("/admin", build_admin_app(kernel))

    config = kernel.plugin_config("boxes")
    if isinstance(config, BoxesConfig) and config.hub.enabled:
        from .hub import build_spoke_app

        # /spoke/connect; also routes the box manager's remote spokes through the hub
        register("/spoke", build_spoke_app(kernel))


@hookimpl
def valetkey_register_services(register: RegisterService, kernel: KernelAPI) -> None:
    from .service import reaper

    async def run() -> None:
        await reaper(kernel)

    register("box-reaper", run)

    from .websession import web_sessions_service

    async def sessions() -> None:
        await web_sessions_service(kernel)

    # says at start whether activation is open; purges expired sign-ins
    register("web-sessions", sessions)
