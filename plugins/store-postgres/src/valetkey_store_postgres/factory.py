"""``build_store``: the factory the plugin registers; turns the plugin's config into a store.

It checks the config and builds the store object; the kernel awaits ``store.open()``, which
connects and migrates. asyncpg is imported on first connection, not at plugin load.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from valetkey_hookspecs.errors import ConfigError

from .config import PostgresConfig

if TYPE_CHECKING:
    from valetkey_hookspecs.interfaces import PluginContext, Store

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_config(config: PostgresConfig, plugin: str = "store-postgres") -> PostgresConfig:
    """``ConfigError`` naming the key for a missing DSN or an impossible setting."""
    where = f"[plugin.{plugin}]"
    if not config.dsn:
        raise ConfigError(
            f'{where} dsn is required: e.g. dsn = {{ "$env" = "VALETKEY_PG_DSN" }} '
            '(with [select] store = "postgres")'
        )
    if config.schema and not _SCHEMA.match(config.schema):
        raise ConfigError(
            f"{where} schema must be a lower-case SQL name (letters, digits, _): {config.schema!r}"
        )
    if config.pool_max_size < 1 or config.pool_min_size < 0:
        raise ConfigError(f"{where} pool_max_size must be >= 1 and pool_min_size >= 0")
    if not config.connect_timeout > 0 or config.statement_timeout < 0:
        raise ConfigError(f"{where} connect_timeout must be > 0 and statement_timeout >= 0")
    return config


def build_store(ctx: PluginContext) -> Store:
    """Build the (not yet opened) store from ``ctx.config``."""
    config = ctx.config if ctx.config is not None else PostgresConfig()
    check_config(config, ctx.plugin)
    from .store import PostgresStore

    return PostgresStore(config)
