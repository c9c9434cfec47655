"""The ``[plugin.store-sqlite]`` table of plugins.toml, as the kernel validates it."""

from __future__ import annotations

from dataclasses import dataclass

#: file name of the database inside ``$VALETKEY_HOME`` when no ``path`` is configured
DEFAULT_FILE = "valetkey.db"


@dataclass(frozen=True)
class SqliteConfig:
    """Where the SQLite store lives and how long a writer waits for another process's lock."""

    #: database file; ``~`` is expanded and a relative path is relative to ``$VALETKEY_HOME``
    #: (default: ``$VALETKEY_HOME/valetkey.db``)
    path: str | None = None
    #: how long a statement waits for another connection's write lock before failing
    busy_timeout_ms: int = 5000
