"""Answering relayed JSON-RPC requests with an in-process MCP server.

The relay forwards each public caller's JSON-RPC request as ``(method, params)``; this module
runs it through the MCP SDK's own per-request kernel (``mcp.server.runner.serve_one``) exactly as
the stateless streamable-HTTP entry of ``valetkey serve``'s ``/mcp`` would:

- a request whose ``params._meta`` carries the 2026-07-28 envelope (protocol version, client
  capabilities) is validated by the SDK's inbound ladder and served at that version;
- anything else (the ``initialize`` handshake era) is served on a born-ready connection at the
  protocol version the caller sent in its ``MCP-Protocol-Version`` header (forwarded in the
  envelope), like a stateless ``/mcp`` request.

Errors become JSON-RPC error objects: an ``MCPError`` or invalid params keep their code; any other
exception is logged here and answered with ``-32603`` ("Internal error") so that handler
internals, and the secrets they may hold, never reach the public caller.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

log = logging.getLogger("valetkey.relay")

INTERNAL_ERROR = -32603


@dataclass
class _RelayDispatchContext:
    """The ``DispatchContext`` of one relayed request: no back channel (the relay carries one
    reply per request), notifications and progress are dropped."""

    transport: Any
    request_id: Any
    message_metadata: Any = None
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)
    can_send_request: bool = False

    async def send_raw_request(self, method: str, params: Any, opts: Any = None) -> dict[str, Any]:
        from mcp.shared.exceptions import NoBackChannelError

        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Any, opts: Any = None) -> None:
        return None

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        return None


class McpDispatcher:
    """Serves ``(method, params)`` requests with one MCP server; use ``async with`` (it enters
    the server's lifespan once)."""

    def __init__(self, server: Any) -> None:
        # MCPServer wraps the low-level Server the runner drives (mcp's own Client does the same)
        self._server = getattr(server, "_lowlevel_server", server)
        self._state: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> McpDispatcher:
        stack = contextlib.AsyncExitStack()
        self._state = await stack.enter_async_context(self._server.lifespan(self._server))
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def handle(
        self,
        request_id: Any,
        method: str,
        params: Mapping[str, Any] | None,
        protocol_version: str | None = None,
    ) -> dict[str, Any]:
        """The JSON-RPC response body (``result`` or ``error``) for one request, id included."""
        try:
            result = await self._serve(request_id, method, params, protocol_version)
        except Exception as exc:
            return {"jsonrpc": "2.0", "id": request_id, "error": _error_data(exc, method)}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    async def _serve(
        self,
        request_id: Any,
        method: str,
        params: Mapping[str, Any] | None,
        protocol_version: str | None,
    ) -> dict[str, Any]:
        from mcp.server.connection import Connection
        from mcp.server.runner import serve_one
        from mcp.shared.exceptions import MCPError
        from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request
        from mcp.shared.transport_context import TransportContext
        from mcp_types import DEFAULT_NEGOTIATED_VERSION, PROTOCOL_VERSION_META_KEY

        if self._stack is None:
            raise RuntimeError("McpDispatcher used outside 'async with'")
        meta = (params or {}).get("_meta")
        modern = isinstance(meta, Mapping) and PROTOCOL_VERSION_META_KEY in meta
        if method != "initialize" and modern:
            route = classify_inbound_request({"method": method, "params": params})
            if isinstance(route, InboundLadderRejection):
                raise MCPError(code=route.code, message=route.message, data=route.data)
            connection = Connection.from_envelope(
                route.protocol_version, route.client_info, route.client_capabilities
            )
        else:
            connection = Connection.from_envelope(
                protocol_version or DEFAULT_NEGOTIATED_VERSION, None, None
            )
        dctx = _RelayDispatchContext(
            transport=TransportContext(kind="valetkey-relay", can_send_request=False),
            request_id=request_id,
        )
        result: dict[str, Any] = await serve_one(
            self._server,
            dctx,
            method,
            params,
            connection=connection,
            lifespan_state=self._state,
        )
        return result


def _error_data(exc: Exception, method: str) -> dict[str, Any]:
    from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data

    error = handler_exception_to_error_data(exc)
    if error is None:
        log.error("relayed %s failed: %s", method, type(exc).__name__, exc_info=exc)
        return {"code": INTERNAL_ERROR, "message": "Internal error"}
    body: dict[str, Any] = error.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body
