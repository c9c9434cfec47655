"""``build_store``: the factory the plugin registers; turns the plugin's config into a store.

It only computes the path: the kernel awaits ``store.open()``, which creates the file. The store
module (and with it sqlite3 and aiosqlite) is imported here, on first use, not at plugin load.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from valetkey_hookspecs.errors import ConfigError

from .config import DEFAULT_FILE, SqliteConfig

if TYPE_CHECKING:
    from valetkey_hookspecs.interfaces import PluginContext, Store


def database_path(config: SqliteConfig, home: Path) -> Path:
    """The configured file (``~`` expanded, relative to ``home``), else ``home/valetkey.db``."""
    path = Path(config.path).expanduser() if config.path else Path(DEFAULT_FILE)
    return path if path.is_absolute() else home / path


def build_store(ctx: PluginContext) -> Store:
    """Build the (not yet opened) store from ``ctx.config`` (None: defaults) and ``ctx.home``."""
    config = ctx.config if ctx.config is not None else SqliteConfig()
    if config.busy_timeout_ms < 0:
        raise ConfigError(
            f"[plugin.{ctx.plugin}] busy_timeout_ms must be >= 0 (got {config.busy_timeout_ms})"
        )
    from .store import SqliteStore

    return SqliteStore(database_path(config, ctx.home), busy_timeout_ms=config.busy_timeout_ms)
