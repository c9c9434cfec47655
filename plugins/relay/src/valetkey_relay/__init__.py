"""relay: serve this machine's MCP tools through a public relay over an outbound WebSocket — no
open port, no tunnel service — with the machine token kept in the OS keyring.

Commands (``valetkey relay …``): ``connect`` (open the relay's connect page, paste the attach
line), ``attach --url U --token-stdin``, ``status``, ``revoke``, ``serve``. The public side is
the ``relay-server`` plugin (``valetkey relay host``), which adds its commands to the same
``relay`` group (see :mod:`valetkey_relay.group`) and shares :mod:`valetkey_relay.protocol`.

Only hook implementations live here; websockets, keyring and mcp are imported when first used.
"""

from __future__ import annotations

from typing import Any

from valetkey_hookspecs import hookimpl

from .config import RelayConfig

_COMMANDS = [
    ("connect", "Attach this machine through the relay's connect page (paste the attach line)."),
    ("attach", "Attach this machine to a relay with a URL and a machine token on stdin."),
    ("status", "Show the relay this machine is attached to (token masked)."),
    ("revoke", "Forget this machine's relay credential (keyring entry and relay.toml)."),
    ("serve", "Serve this machine's MCP tools through the relay (reconnects with backoff)."),
]


@hookimpl
def valetkey_config_schema() -> type[RelayConfig]:
    """``[plugin.relay]``: see :class:`RelayConfig`."""
    return RelayConfig


@hookimpl
def valetkey_register_commands(app: Any) -> None:
    """``valetkey relay connect|attach|status|revoke|serve`` (lazily imported)."""
    from .group import relay_group

    group = relay_group(app)
    for name, help_text in _COMMANDS:
        group.command(f"valetkey_relay.cli:{name}", name=name, help=help_text)


__all__ = ["RelayConfig", "valetkey_config_schema", "valetkey_register_commands"]
