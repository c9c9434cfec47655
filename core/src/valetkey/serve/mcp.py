"""The one MCP endpoint: an ``MCPServer`` holding every plugin's tools."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from valetkey_hookspecs import ValetkeyError

from ..kernel import Kernel
from ..log import redact_text


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
        server.add_tool(_clear_errors(tool.fn), name=tool.name, description=tool.description)
    return server


def _clear_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn a ``ValetkeyError`` into an MCP tool error that keeps its (secret-free) message; any
    other exception stays an opaque "Error executing tool" for the client and is logged."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except ValetkeyError as exc:
            raise ToolError(redact_text(str(exc))) from None

    return wrapper
