"""``PostgresStore``: the valetkey ``Store`` on PostgreSQL through an asyncpg pool, for several
``valetkey serve`` processes (on several hosts) sharing one database.

Every repository method is one pool round trip. What several servers must not do twice is
arbitrated by the database: lease rows (single-flight refresh, claimed refresh-ahead work) with
the database's clock, ``FOR UPDATE SKIP LOCKED`` claims, an advisory lock around each audit
append, and one around migrations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valetkey_hookspecs.errors import InvalidInput

from .config import PostgresConfig
from .db import Database
from .migrations import MIGRATIONS
from .repos.api_tokens import PostgresApiTokens
from .repos.audit import PostgresAuditLog
from .repos.boxes import PostgresBoxSessions
from .repos.connections import PostgresConnections
from .repos.credentials import PostgresCredentials
from .repos.leases import PostgresLeases
from .repos.relays import PostgresRelays
from .repos.runs import PostgresProxyRuns
from .repos.spokes import PostgresSpokes
from .repos.transient import PostgresTransient

if TYPE_CHECKING:
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


class PostgresStore:
    """A ``Store`` in one PostgreSQL database (optionally one schema of it)."""

    def __init__(self, config: PostgresConfig, *, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.config = config
        self.db = Database(config, migrations=migrations)
        self.connections: ConnectionRepo = PostgresConnections(self.db)
        self.credentials: CredentialRepo = PostgresCredentials(self.db)
        self.audit: AuditLog = PostgresAuditLog(self.db)
        self.leases: Leases = PostgresLeases(self.db)
        self.api_tokens: ApiTokenRepo = PostgresApiTokens(self.db)
        self.runs: ProxyRunRepo = PostgresProxyRuns(self.db)
        self.boxes: BoxSessionRepo = PostgresBoxSessions(self.db)
        self.transient: TransientRepo = PostgresTransient(self.db)
        self.spokes: SpokeRepo = PostgresSpokes(self.db)
        self.relays: RelayRepo = PostgresRelays(self.db)

    def __repr__(self) -> str:
        return f"PostgresStore({self.db.where!r})"

    async def open(self) -> None:
        """Create the pool and apply pending migrations (under the advisory lock); idempotent."""
        await self.db.open()

    async def close(self) -> None:
        """Close the pool; idempotent."""
        await self.db.close()

    async def schema_version(self) -> int:
        """The applied schema version."""
        return await self.db.schema_version()

    async def import_records(self, source: object) -> dict[str, Any]:
        """Copy every record of ``source`` — a SQLite store (anything with the ``path`` of its
        file) — into this store, verified by counts and checksums; safe to re-run. What
        ``valetkey store migrate --to postgres`` calls. Returns the report as JSON data."""
        path = getattr(source, "path", None)
        if not isinstance(path, Path):
            raise InvalidInput(
                f"the postgres store imports from a SQLite store file, not from {source!r}"
            )
        from .copy import import_sqlite

        report = await import_sqlite(path, self.db)
        return report.as_dict()

    async def flush(self) -> None:
        """Nothing to do: PostgreSQL makes a transaction durable when it commits (with the
        server's ``synchronous_commit`` on, its default). One round trip checks the
        connection."""
        await self.db.execute("SELECT 1")


if TYPE_CHECKING:

    def _conforms(store: PostgresStore) -> Store:
        return store  # mypy checks PostgresStore against the Store protocol here
