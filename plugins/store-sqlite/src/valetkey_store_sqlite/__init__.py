"""valetkey-store-sqlite: the default valetkey store, one SQLite file in WAL mode (aiosqlite).

Only the hook implementations live here, and only light imports: the store (with sqlite3 and
aiosqlite) is imported when the kernel first builds it, so ``valetkey --help`` never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import hookimpl

from .config import SqliteConfig
from .factory import build_store

if TYPE_CHECKING:
    from valetkey_hookspecs.interfaces import RegisterFactory, Store

__all__ = ["valetkey_config_schema", "valetkey_register_stores"]


@hookimpl
def valetkey_config_schema() -> type[Any]:
    """``[plugin.store-sqlite]``: ``path`` and ``busy_timeout_ms`` (see ``SqliteConfig``)."""
    return SqliteConfig


@hookimpl
def valetkey_register_stores(register: RegisterFactory[Store]) -> None:
    """Register the ``sqlite`` store, the default when several stores are installed."""
    register("sqlite", build_store, default=True)
