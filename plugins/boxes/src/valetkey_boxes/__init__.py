"""boxes: the box manager — sandbox containers driven over MCP (``create_box``, ``exec_box``, …),
an auth page that keeps OAuth codes out of chat (``/auth/{token}``), lifecycle hooks, grants
through the proxy, a reaper for boxes never signed in, and ``valetkey box``.

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


@hookimpl
def valetkey_register_mcp_tools(register: RegisterMcpTool, kernel: KernelAPI) -> None:
    from .tools import register_tools

    register_tools(register, kernel)


@hookimpl
def valetkey_register_routes(register: RegisterRoute, kernel: KernelAPI) -> None:
    from .authpage import build_auth_app

    register("/auth", build_auth_app(kernel))


@hookimpl
def valetkey_register_services(register: RegisterService, kernel: KernelAPI) -> None:
    from .service import reaper

    async def run() -> None:
        await reaper(kernel)

    register("box-reaper", run)
