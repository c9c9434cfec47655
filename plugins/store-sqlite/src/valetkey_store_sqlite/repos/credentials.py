"""Sealed credentials, one current credential per connection.

The store only ever sees ``Sealed`` bytes and keeps them exactly as given. ``version`` grows by one
with every replacement (``put`` over an existing credential, ``replace``); ``rewrap`` swaps the
wrapped data key only and leaves the version alone, so it never makes a concurrent refresh fail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta

from valetkey_hookspecs.errors import Conflict, InvalidInput, NotFound, PluginError
from valetkey_hookspecs.interfaces import Rewrap
from valetkey_hookspecs.sqlrows import connection_from, credential_from
from valetkey_hookspecs.types import Connection, Credential, CredentialKind, Sealed, utcnow

from ..codec import enum_value, now_us, opt_to_us, to_us
from ..db import Database
from .connections import COLUMNS as CONNECTION_COLUMNS

COLUMNS = (
    "id, connection_id, kind, ciphertext, wrapped_key, key_id, expires_at, version, updated_at"
)
_JOINED = ", ".join(
    [f"c.{name} AS c_{name}" for name in CONNECTION_COLUMNS.split(", ")]
    + [f"cr.{name} AS cr_{name}" for name in COLUMNS.split(", ")]
)


def _none(connection_id: str) -> NotFound:
    return NotFound(f"connection {connection_id!r} has no credential")


class SqliteCredentials:
    """``CredentialRepo`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, credential: Credential) -> Credential:
        """Insert or replace the connection's credential; the result has the stored version
        (the given one for a first credential, the previous one plus one for a replacement).
        ``NotFound`` if the connection does not exist, ``Conflict`` if another connection's
        credential has this id."""
        sealed = credential.sealed
        row = await self._db.fetchone(
            f"INSERT INTO credentials ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (connection_id) DO UPDATE SET id = excluded.id, kind = excluded.kind, "
            "ciphertext = excluded.ciphertext, wrapped_key = excluded.wrapped_key, "
            "key_id = excluded.key_id, expires_at = excluded.expires_at, "
            "version = credentials.version + 1, updated_at = excluded.updated_at "
            f"RETURNING {COLUMNS}",
            (
                credential.id,
                credential.connection_id,
                enum_value(CredentialKind, credential.kind, "credential kind"),
                sealed.ciphertext,
                sealed.wrapped_key,
                sealed.key_id,
                opt_to_us(credential.expires_at, "credential expires_at"),
                credential.version,
                to_us(credential.updated_at, "credential updated_at"),
            ),
            errors={
                "FOREIGN KEY": NotFound(f"connection {credential.connection_id!r} not found"),
                "credentials.id": Conflict(
                    f"credential {credential.id!r} belongs to another connection"
                ),
            },
        )
        if row is None:  # pragma: no cover - an upsert without WHERE always returns its row
            raise PluginError(f"storing credential {credential.id!r} returned nothing")
        return credential_from(row)

    async def get(self, connection_id: str) -> Credential:
        """The connection's credential; ``NotFound`` if it has none."""
        row = await self._db.fetchone(
            f"SELECT {COLUMNS} FROM credentials WHERE connection_id = ?", (connection_id,)
        )
        if row is None:
            raise _none(connection_id)
        return credential_from(row)

    async def get_with_connection(
        self, connection_id: str, owner: str | None = None
    ) -> tuple[Connection, Credential | None]:
        """The connection and its credential in one SELECT (the vend hot path, read in place
        without a thread hop); ``NotFound`` if the connection is missing or foreign."""
        scope, params = ("AND c.owner = ?", (owner,)) if owner is not None else ("", ())
        row = await self._db.read_now(
            f"SELECT {_JOINED} FROM connections c "
            "LEFT JOIN credentials cr ON cr.connection_id = c.id "
            f"WHERE c.id = ? {scope}",
            (connection_id, *params),
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
        params = (
            sealed.ciphertext,
            sealed.wrapped_key,
            sealed.key_id,
            opt_to_us(expires_at, "credential expires_at"),
            now_us(),
            connection_id,
            expected_version,
            expected_version,
        )

        def swap(raw: sqlite3.Connection) -> sqlite3.Row:
            rows = raw.execute(
                "UPDATE credentials SET ciphertext = ?, wrapped_key = ?, key_id = ?, "
                "expires_at = ?, version = version + 1, updated_at = ? "
                "WHERE connection_id = ? AND (? IS NULL OR version = ?) "
                f"RETURNING {COLUMNS}",
                params,
            ).fetchall()
            if rows:
                row: sqlite3.Row = rows[0]
                return row
            current = raw.execute(
                "SELECT version FROM credentials WHERE connection_id = ?", (connection_id,)
            ).fetchone()
            if current is None:
                raise _none(connection_id)
            raise Conflict(
                f"the credential of connection {connection_id!r} changed: it is at version "
                f"{current[0]}, not {expected_version}"
            )

        return credential_from(await self._db.call(swap))

    async def due(self, before: datetime, limit: int) -> list[Credential]:
        """Credentials of ACTIVE connections expiring before ``before``, soonest first."""
        if limit <= 0:
            return []
        rows = await self._db.fetchall(
            f"SELECT {', '.join('cr.' + c for c in COLUMNS.split(', '))} "
            "FROM credentials cr JOIN connections c ON c.id = cr.connection_id "
            "WHERE cr.expires_at IS NOT NULL AND cr.expires_at < ? AND c.status = 'ACTIVE' "
            "ORDER BY cr.expires_at, cr.id LIMIT ?",
            (to_us(before, "before"), limit),
        )
        return [credential_from(row) for row in rows]

    async def claim_due(
        self, before: datetime, limit: int, holder: str, ttl: float
    ) -> list[Credential]:
        """Like ``due``, but each credential returned is leased to ``holder`` for ``ttl``
        seconds (lease ``refresh:<connection id>``) in the same ``BEGIN IMMEDIATE``
        transaction, and credentials another holder leases (unexpired) are left out."""
        if not ttl > 0:
            raise InvalidInput("claim_due: ttl must be a positive number of seconds")
        if limit <= 0:
            return []
        now = utcnow()
        now_us, until_us = to_us(now, "now"), to_us(now + timedelta(seconds=ttl), "expiry")
        params = (to_us(before, "before"), holder, now_us, limit)

        def claim(raw: sqlite3.Connection) -> list[sqlite3.Row]:
            rows = raw.execute(
                f"SELECT {', '.join('cr.' + c for c in COLUMNS.split(', '))} "
                "FROM credentials cr JOIN connections c ON c.id = cr.connection_id "
                "LEFT JOIN leases l ON l.name = 'refresh:' || cr.connection_id "
                "WHERE cr.expires_at IS NOT NULL AND cr.expires_at < ? AND c.status = 'ACTIVE' "
                "AND (l.name IS NULL OR l.holder = ? OR l.expires_at <= ?) "
                "ORDER BY cr.expires_at, cr.id LIMIT ?",
                params,
            ).fetchall()
            raw.executemany(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at",
                [(f"refresh:{row['connection_id']}", holder, until_us) for row in rows],
            )
            return rows

        return [credential_from(row) for row in await self._db.transaction(claim)]

    async def key_ids(self) -> dict[str, int]:
        """How many credentials are sealed under each key id."""
        rows = await self._db.fetchall(
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
        rows = await self._db.fetchall(
            f"SELECT {COLUMNS} FROM credentials WHERE key_id != ? AND id > ? ORDER BY id LIMIT ?",
            (key_id, after or "", limit),
        )
        return [credential_from(row) for row in rows]

    async def rewrap(self, items: Sequence[Rewrap]) -> int:
        """Store new wrapped keys in one transaction, each only if the credential still has
        ``old_key_id`` and ``version``; returns how many were written."""
        if not items:
            return 0
        params = [
            (i.wrapped_key, i.key_id, i.credential_id, i.old_key_id, i.version) for i in items
        ]

        def write(raw: sqlite3.Connection) -> int:
            cursor = raw.executemany(
                "UPDATE credentials SET wrapped_key = ?, key_id = ?"
                " WHERE id = ? AND key_id = ? AND version = ?",
                params,
            )
            return int(cursor.rowcount)

        return await self._db.transaction(write)

    async def delete(self, connection_id: str) -> None:
        """Remove the connection's credential (no error if it has none)."""
        await self._db.execute("DELETE FROM credentials WHERE connection_id = ?", (connection_id,))
