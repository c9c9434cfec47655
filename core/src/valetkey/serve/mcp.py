"""The one MCP endpoint: an ``MCPServer`` holding every plugin's tools."""

from __future__ import annotations

from typing import Any

from ..kernel import Kernel


def build_mcp_server(kernel: Kernel) -> Any:
    """An ``mcp.server.mcpserver.MCPServer`` with every registered tool (imported here: mcp is
    heavy)."""
    from mcp.server.mcpserver import MCPServer

    from .. import __version__

    server = MCPServer(
        "valetkey",
        version=__version__,
        instructions="valetkey: credentials and sandboxes for agents. Tools never return secrets.",
        log_level="WARNING",
    )
    for tool in kernel.mcp_tools():
        server.add_tool(tool.fn, name=tool.name, description=tool.description)
    return server
