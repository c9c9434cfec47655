"""valetkey-store-postgres: the valetkey store on PostgreSQL (asyncpg, pooled), for several
``valetkey serve`` processes sharing one database.

Select it with ``[select] store = "postgres"`` and give the DSN by reference::

    [plugin.store-postgres]
    dsn = { "$env" = "VALETKEY_PG_DSN" }

Only the hook implementations live here, and only light imports: the store (with asyncpg) is
imported when the kernel first builds it, so ``valetkey --help`` never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import hookimpl

from .config import PostgresConfig
from .factory import build_store

if TYPE_CHECKING:
    from valetkey_hookspecs.interfaces import RegisterFactory, Store

__all__ = ["valetkey_config_schema", "valetkey_register_stores"]


@hookimpl
def valetkey_config_schema() -> type[Any]:
    """``[plugin.store-postgres]``: ``dsn`` (by ``$env`` / ``$file`` reference), ``schema``,
    pool sizes and timeouts (see ``PostgresConfig``)."""
    return PostgresConfig


@hookimpl
def valetkey_register_stores(register: RegisterFactory[Store]) -> None:
    """Register the ``postgres`` store (never the default: select it in plugins.toml)."""
    register("postgres", build_store)
