"""``SqliteStore``: the default valetkey ``Store``, one SQLite file in WAL mode via aiosqlite.

One connection per store object; every repository method is one hop to aiosqlite's worker thread
(see ``db.py``). Several store objects or processes may share one file: WAL lets readers run
beside the writer, and every read-then-write runs under ``BEGIN IMMEDIATE`` or as one atomic
statement.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .db import Database
from .migrations import MIGRATIONS
from .repos.api_tokens import SqliteApiTokens
from .repos.audit import SqliteAuditLog
from .repos.boxes import SqliteBoxSessions
from .repos.connections import SqliteConnections
from .repos.credentials import SqliteCredentials
from .repos.leases import SqliteLeases
from .repos.relays import SqliteRelays
from .repos.runs import SqliteProxyRuns
from .repos.spokes import SqliteSpokes
from .repos.transient import SqliteTransient

if TYPE_CHECKING:
    from collections.abc import Sequence

    from valetkey_hookspecs.interfaces import (
        ApiTokenRepo,
        AuditLog,
        BoxSessionRepo,
        ConnectionRepo,
        CredentialRepo,
        Leases,
        ProxyRunRepo,
        RelayRepo,
        SpokeRepo,
        Store,
        TransientRepo,
    )


class SqliteStore:
    """A ``Store`` in one SQLite file (created 0600 in a 0700 folder).

    The repositories are typed as the protocol types because ``Store`` declares them as plain
    (mutable, hence invariant) attributes; each concrete class is checked against its protocol
    in the test suite and by mypy through ``_conforms`` below.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_ms: int = 5000,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self._db = Database(self.path, busy_timeout_ms=busy_timeout_ms, migrations=migrations)
        self.connections: ConnectionRepo = SqliteConnections(self._db)
        self.credentials: CredentialRepo = SqliteCredentials(self._db)
        self.audit: AuditLog = SqliteAuditLog(self._db)
        self.leases: Leases = SqliteLeases(self._db)
        self.api_tokens: ApiTokenRepo = SqliteApiTokens(self._db)
        self.runs: ProxyRunRepo = SqliteProxyRuns(self._db)
        self.boxes: BoxSessionRepo = SqliteBoxSessions(self._db)
        self.transient: TransientRepo = SqliteTransient(self._db)
        self.spokes: SpokeRepo = SqliteSpokes(self._db)
        self.relays: RelayRepo = SqliteRelays(self._db)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def open(self) -> None:
        """Create the file if needed, connect and apply pending migrations; idempotent."""
        await self._db.open()

    async def close(self) -> None:
        """Close the connection; idempotent."""
        await self._db.close()

    async def schema_version(self) -> int:
        """The applied schema version (``PRAGMA user_version``)."""
        return await self._db.schema_version()

    async def flush(self) -> None:
        """Checkpoint the WAL into the database file with a full sync (``synchronous=NORMAL``
        makes commits durable at checkpoints, not at every commit)."""
        await self._db.checkpoint()

    async def pragma(self, name: str) -> Any:
        """Read a diagnostic pragma: journal_mode, synchronous, foreign_keys, busy_timeout,
        user_version."""
        return await self._db.pragma(name)


if TYPE_CHECKING:

    def _conforms(store: SqliteStore) -> Store:
        return store  # mypy checks SqliteStore against the Store protocol here
