"""relay-server: host a valetkey relay — the public side of ``valetkey relay``.

``valetkey relay host`` serves a connect page (creates a relay id and a machine token, stored
hashed in the kernel's store), the WebSocket endpoint machines dial (``/relay/<id>/ws/``) and one
public MCP endpoint per relay (``/relay/<id>/mcp``) that forwards each JSON-RPC request to the
machine. Public callers need an access token: ``valetkey relay token create <relay id>``.

The wire envelope comes from :mod:`valetkey_relay.protocol` (this distribution depends on
``valetkey-relay``), and the commands join the ``relay`` group that plugin defines (see
:mod:`valetkey_relay.group`). Only hook implementations live here; starlette and uvicorn are
imported when the host starts.
"""

from __future__ import annotations

from typing import Any

from valetkey_hookspecs import hookimpl

from .config import RelayServerConfig


@hookimpl
def valetkey_config_schema() -> type[RelayServerConfig]:
    """``[plugin.relay-server]``: see :class:`RelayServerConfig`."""
    return RelayServerConfig


@hookimpl
def valetkey_register_commands(app: Any) -> None:
    """``valetkey relay host`` and ``valetkey relay token create|list|revoke``."""
    from valetkey_relay.group import relay_group

    group = relay_group(app)
    group.command(
        "valetkey_relay_server.cli:host",
        name="host",
        help="Host a relay: connect page, machine WebSocket, public MCP endpoints.",
    )
    group.command(
        "valetkey_relay_server.cli:token_app",
        name="token",
        help="Create, list and revoke access tokens of a hosted relay.",
    )


__all__ = ["RelayServerConfig", "valetkey_config_schema", "valetkey_register_commands"]
