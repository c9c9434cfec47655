"""connectors: the providers valetkey can connect to, as data.

Registers the built-in catalog (GitHub, GitLab, Google, Microsoft, Slack, OpenAI, Anthropic, ...:
one TOML file per provider in ``catalog/``) and the user's own connector files
(``~/.config/valetkey/connectors/*.toml`` and the folders named by ``[plugin.connectors] dirs``),
where a user file may replace a built-in connector. A bad file is reported with its path and
field (``valetkey plugins doctor``) and skipped; the others still load. Adds
``valetkey connectors list|show``.

Only the hook implementations live here, with light imports: the files are read when the kernel
first asks for the catalog, not when the plugin is imported, so ``valetkey --help`` never pays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import hookimpl

from . import config as _config
from .config import ConnectorsConfig

if TYPE_CHECKING:
    import cyclopts

    from valetkey_hookspecs import KernelAPI
    from valetkey_hookspecs.interfaces import RegisterConnector

__all__ = [
    "valetkey_config_schema",
    "valetkey_doctor",
    "valetkey_register_commands",
    "valetkey_register_connectors",
]


@hookimpl
def valetkey_config_schema() -> type[Any]:
    """``[plugin.connectors]``: ``builtin`` and ``dirs`` (see ``ConnectorsConfig``)."""
    return ConnectorsConfig


@hookimpl
def valetkey_register_connectors(register: RegisterConnector, kernel: KernelAPI) -> None:
    """Register the built-in connectors and the user's, user files replacing built-ins."""
    from .loader import load

    _config.bind(kernel)

    for connector in load().connectors.values():
        register(connector)


@hookimpl
def valetkey_register_commands(app: cyclopts.App, kernel: KernelAPI) -> None:
    """``valetkey connectors list|show`` (imported when run)."""
    _config.bind(kernel)
    app.command(
        "valetkey_connectors.cli:app", name="connectors", help="List and inspect connectors."
    )


@hookimpl
def valetkey_doctor(kernel: KernelAPI) -> list[str]:
    """One line per bad connector file or missing configured folder: path, field, problem."""
    from .loader import load

    _config.bind(kernel)
    return list(load().problems)
