"""broker: the credential broker — connections per owner, vend with refresh-on-read,
single-flight refresh across processes, refresh-ahead scheduler, hash-chained audit log, and
the commands that drive them (``valetkey connect``, ``key add``, ``connections``, ``token``,
``refresh``, ``audit``).

Only hook implementations live here; everything else is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import hookimpl

from .config import BrokerConfig

if TYPE_CHECKING:
    from valetkey_hookspecs import KernelAPI, PluginContext
    from valetkey_hookspecs.interfaces import RegisterFactory, RegisterRoute, RegisterService

_COMMANDS = [
    (
        "valetkey_broker.cli:connect",
        "connect",
        "Connect an account (OAuth: browser or device code).",
    ),
    ("valetkey_broker.cli:key_app", "key", "Add an API key (read from stdin or a hidden prompt)."),
    (
        "valetkey_broker.cli:connections_app",
        "connections",
        "List, show, revoke, delete connections.",
    ),
    ("valetkey_broker.cli:token", "token", "Print a connection's current token (for $(...))."),
    ("valetkey_broker.cli:refresh", "refresh", "Refresh one connection, or every one that is due."),
    ("valetkey_broker.cli:audit", "audit", "Show or verify the hash-chained audit log."),
    ("valetkey_broker.cli:tokens_app", "tokens", "Create, list and revoke REST API tokens."),
]


@hookimpl
def valetkey_config_schema() -> type[Any]:
    return BrokerConfig


@hookimpl
def valetkey_register_brokers(register: RegisterFactory[Any]) -> None:
    def build(ctx: PluginContext) -> Any:
        from .broker import serving_broker

        return serving_broker(ctx.kernel)

    register("broker", build, default=True)


@hookimpl
def valetkey_register_commands(app: Any) -> None:
    for target, name, help_text in _COMMANDS:
        app.command(target, name=name, help=help_text)


@hookimpl
def valetkey_register_routes(register: RegisterRoute, kernel: KernelAPI) -> None:
    from .api import build_api

    register("/api", build_api(kernel))


@hookimpl
def valetkey_register_services(register: RegisterService, kernel: KernelAPI) -> None:
    from .scheduler import refresh_ahead

    async def run() -> None:
        await refresh_ahead(kernel)

    register("refresh-ahead", run)
