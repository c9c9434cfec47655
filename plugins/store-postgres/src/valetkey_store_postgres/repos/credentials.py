"""Sealed credentials, one current credential per connection, and the refresh-ahead claim.

The store only ever sees ``Sealed`` bytes and keeps them exactly as given. ``version`` grows by
one with every replacement; ``rewrap`` swaps the wrapped data key only.

``claim_due`` is how several servers share refresh-ahead work: one statement picks due
credentials with ``FOR UPDATE SKIP LOCKED`` (a credential another server is claiming at that
instant is skipped, not waited for) and writes a ``refresh:<connection id>`` lease row for each,
only where no other holder has an unexpired one. The lease row is the one the broker's
single-flight refresh takes, so a claimed credential is refreshed by its claimer alone, and a
crashed server's claims expire with their lease and are claimed by the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from valetkey_hookspecs.errors import Conflict, InvalidInput, NotFound, PluginError
from valetkey_hookspecs.interfaces import Rewrap
from valetkey_hookspecs.sqlrows import connection_from, credential_from
from valetkey_hookspecs.types import Connection, Credential, CredentialKind, Sealed

from ..codec import enum_value, now_us, opt_to_us, to_us
from ..db import Database
from .connections import COLUMNS as CONNECTION_COLUMNS
from .leases import DB_NOW_US

COLUMNS = (
    "id, connection_id, kind, ciphertext, wrapped_key, key_id, expires_at, version, updated_at"
)
_CR = ", ".join(f"cr.{name}" for name in COLUMNS.split(", "))
_JOINED = ", ".join(
    [f"c.{name} AS c_{name}" for name in CONNECTION_COLUMNS.split(", ")]
    + [f"cr.{name} AS cr_{name}" for name in COLUMNS.split(", ")]
)
#: the lease a refresh of a connection takes (the broker's single-flight lease)
REFRESH_LEASE = "refresh:"
#: statements one claim may run: a row picked on a snapshot taken just before another server's
#: claim committed loses at the lease upsert (``won`` false); the next statement sees that lease
_CLAIM_ATTEMPTS = 4
_CLAIM = (
    "WITH now AS (SELECT " + DB_NOW_US + " AS us), "
    "picked AS ("
    f"SELECT {_CR} FROM credentials cr JOIN connections c ON c.id = cr.connection_id "
    "WHERE cr.expires_at IS NOT NULL AND cr.expires_at < $1 AND c.status = 'ACTIVE' "
    "AND NOT EXISTS (SELECT 1 FROM leases l, now WHERE l.name = $3 || cr.connection_id "
    "AND l.holder <> $4 AND l.expires_at > now.us) "
    "ORDER BY cr.expires_at, cr.id LIMIT $2 FOR UPDATE OF cr SKIP LOCKED), "
    "claimed AS ("
    "INSERT INTO leases (name, holder, expires_at) "
    "SELECT $3 || picked.connection_id, $4, now.us + $5 FROM picked, now "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
    "expires_at = excluded.expires_at "
    "WHERE leases.holder = excluded.holder OR leases.expires_at <= " + DB_NOW_US + " "
    "RETURNING name) "
    "SELECT picked.*, claimed.name IS NOT NULL AS won FROM picked "
    "LEFT JOIN claimed ON claimed.name = $3 || picked.connection_id "
    "ORDER BY picked.expires_at, picked.id"
)


#: the advisory lock that serializes claims (an arbitrary constant: "vk claim")
_CLAIM_LOCK = 0x766B_636C_6169_6D


def _none(connection_id: str) -> NotFound:
    return NotFound(f"connection {connection_id!r} has no credential")


class PostgresCredentials:
    """``CredentialRepo`` on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, credential: Credential) -> Credential:
        """Insert or replace the connection's credential; the result has the stored version.
        ``NotFound`` if the connection does not exist, ``Conflict`` if another connection's
        credential has this id."""
        sealed = credential.sealed
        row = await self._db.fetchrow(
            f"INSERT INTO credentials ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (connection_id) DO UPDATE SET id = excluded.id, kind = excluded.kind, "
            "ciphertext = excluded.ciphertext, wrapped_key = excluded.wrapped_key, "
            "key_id = excluded.key_id, expires_at = excluded.expires_at, "
            "version = credentials.version + 1, updated_at = excluded.updated_at "
            f"RETURNING {COLUMNS}",
            credential.id,
            credential.connection_id,
            enum_value(CredentialKind, credential.kind, "credential kind"),
            sealed.ciphertext,
            sealed.wrapped_key,
            sealed.key_id,
            opt_to_us(credential.expires_at, "credential expires_at"),
            credential.version,
            to_us(credential.updated_at, "credential updated_at"),
            errors={
                "FOREIGN KEY": NotFound(f"connection {credential.connection_id!r} not found"),
                "credentials_pkey": Conflict(
                    f"credential {credential.id!r} belongs to another connection"
                ),
            },
        )
        if row is None:  # pragma: no cover - an upsert without WHERE always returns its row
            raise PluginError(f"storing credential {credential.id!r} returned nothing")
        return credential_from(row)

    async def get(self, connection_id: str) -> Credential:
        """The connection's credential; ``NotFound`` if it has none."""
        row = await self._db.fetchrow(
            f"SELECT {COLUMNS} FROM credentials WHERE connection_id = $1", connection_id
        )
        if row is None:
            raise _none(connection_id)
        return credential_from(row)

    async def get_with_connection(
        self, connection_id: str, owner: str | None = None
    ) -> tuple[Connection, Credential | None]:
        """The connection and its credential in one SELECT (the vend hot path); ``NotFound`` if
        the connection is missing or foreign."""
        row = await self._db.fetchrow(
            f"SELECT {_JOINED} FROM connections c "
            "LEFT JOIN credentials cr ON cr.connection_id = c.id "
            "WHERE c.id = $1 AND ($2::text IS NULL OR c.owner = $2)",
            connection_id,
            owner,
        )
        if row is None:
            raise NotFound(f"connection {connection_id!r} not found")
        credential = None if row["cr_id"] is None else credential_from(row, "cr_")
        return connection_from(row, "c_"), credential

    async def replace(
        self,
        connection_id: str,
        sealed: Sealed,
        expires_at: datetime | None,
        *,
        expected_version: int | None = None,
    ) -> Credential:
        """Swap in new sealed bytes (version + 1); ``Conflict`` if ``expected_version`` is stale,
        ``NotFound`` if the connection has no credential."""
        row = await self._db.fetchrow(
            "WITH swapped AS ("
            "UPDATE credentials SET ciphertext = $1, wrapped_key = $2, key_id = $3, "
            "expires_at = $4, version = version + 1, updated_at = $5 "
            "WHERE connection_id = $6 AND ($7::bigint IS NULL OR version = $7) "
            f"RETURNING {COLUMNS}) "
            f"SELECT true AS swapped, {COLUMNS} FROM swapped "
            "UNION ALL SELECT false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, version, NULL "
            "FROM credentials WHERE connection_id = $6 AND NOT EXISTS (SELECT 1 FROM swapped)",
            sealed.ciphertext,
            sealed.wrapped_key,
            sealed.key_id,
            opt_to_us(expires_at, "credential expires_at"),
            now_us(),
            connection_id,
            expected_version,
        )
        if row is None:
            raise _none(connection_id)
        if not row["swapped"]:
            raise Conflict(
                f"the credential of connection {connection_id!r} changed: it is at version "
                f"{row['version']}, not {expected_version}"
            )
        return credential_from(row)

    async def due(self, before: datetime, limit: int) -> list[Credential]:
        """Credentials of ACTIVE connections expiring before ``before``, soonest first."""
        if limit <= 0:
            return []
        rows = await self._db.fetch(
            f"SELECT {_CR} FROM credentials cr JOIN connections c ON c.id = cr.connection_id "
            "WHERE cr.expires_at IS NOT NULL AND cr.expires_at < $1 AND c.status = 'ACTIVE' "
            "ORDER BY cr.expires_at, cr.id LIMIT $2",
            to_us(before, "before"),
            limit,
        )
        return [credential_from(row) for row in rows]

    async def claim_due(
        self, before: datetime, limit: int, holder: str, ttl: float
    ) -> list[Credential]:
        """Like ``due``, but each credential returned is leased to ``holder`` for ``ttl``
        seconds (lease ``refresh:<connection id>``) in the same statement, and credentials
        another holder leases (unexpired) are left out: concurrent claimers get disjoint sets."""
        if not ttl > 0:
            raise InvalidInput("claim_due: ttl must be a positive number of seconds")
        claimed: list[Credential] = []
        for _attempt in range(_CLAIM_ATTEMPTS):
            if len(claimed) >= limit:
                break
            args = (to_us(before, "before"), limit - len(claimed), REFRESH_LEASE, holder)

            async def claim(conn: Any, args: tuple[Any, ...] = args) -> list[Any]:
                # claims run one at a time across every server: the claim's snapshot is taken
                # after the lock, so it sees every earlier claim's lease, refresh and release
                # (two claims in flight together could each see a credential as due and free)
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CLAIM_LOCK)
                rows: list[Any] = await conn.fetch(_CLAIM, *args, int(ttl * 1_000_000))
                return rows

            rows = await self._db.transaction(claim)
            claimed.extend(credential_from(row) for row in rows if row["won"])
            if all(row["won"] for row in rows):
                break  # nothing lost to a concurrent claimer: this is all there is
        return claimed

    async def key_ids(self) -> dict[str, int]:
        """How many credentials are sealed under each key id."""
        rows = await self._db.fetch(
            "SELECT key_id, count(*) FROM credentials GROUP BY key_id ORDER BY key_id"
        )
        return {row[0]: int(row[1]) for row in rows}

    async def not_under_key(
        self, key_id: str, limit: int, after: str | None = None
    ) -> list[Credential]:
        """Up to ``limit`` credentials whose data key is wrapped by another key than ``key_id``,
        by id, after the id ``after``."""
        if limit <= 0:
            return []
        rows = await self._db.fetch(
            f"SELECT {COLUMNS} FROM credentials WHERE key_id <> $1 AND id > $2 "
            "ORDER BY id LIMIT $3",
            key_id,
            after or "",
            limit,
        )
        return [credential_from(row) for row in rows]

    async def rewrap(self, items: Sequence[Rewrap]) -> int:
        """Store new wrapped keys in one transaction, each only if the credential still has
        ``old_key_id`` and ``version``; returns how many were written."""
        if not items:
            return 0
        rows = await self._db.fetch(
            "UPDATE credentials SET wrapped_key = u.wrapped_key, key_id = u.key_id "
            "FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::bigint[]) "
            "AS u(id, wrapped_key, key_id, old_key_id, version) "
            "WHERE credentials.id = u.id AND credentials.key_id = u.old_key_id "
            "AND credentials.version = u.version RETURNING credentials.id",
            [i.credential_id for i in items],
            [i.wrapped_key for i in items],
            [i.key_id for i in items],
            [i.old_key_id for i in items],
            [i.version for i in items],
        )
        return len(rows)

    async def delete(self, connection_id: str) -> None:
        """Remove the connection's credential (no error if it has none)."""
        await self._db.execute("DELETE FROM credentials WHERE connection_id = $1", connection_id)
