"""The kernel's own essential plugin (registered always, cannot be disabled, like pytest's
essential plugins): the ``valetkey_status`` MCP tool."""

from __future__ import annotations

from typing import Any

from valetkey_hookspecs import KernelAPI, hookimpl
from valetkey_hookspecs.interfaces import RegisterMcpTool

NAME = "valetkey"


@hookimpl
def valetkey_register_mcp_tools(register: RegisterMcpTool, kernel: KernelAPI) -> None:
    async def valetkey_status() -> dict[str, Any]:
        """Version of valetkey, loaded plugins and the number of known connectors (no secrets)."""
        from . import __version__

        plugins = getattr(kernel, "plugins", [])
        return {
            "version": __version__,
            "plugins": [p.name for p in plugins if p.loaded],
            "connectors": len(kernel.connectors),
        }

    register(valetkey_status, name="valetkey_status")
