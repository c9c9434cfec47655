"""Short-lived records with an expiry (login flows, OAuth states, web sessions).

An expired record is invisible at once (``get`` and ``take`` compare with the clock) and is
deleted by ``purge_expired``. ``take`` is one ``DELETE ... RETURNING``: single use, even between
servers.
"""

from __future__ import annotations

from datetime import datetime

from valetkey_hookspecs.errors import NotFound
from valetkey_hookspecs.sqlrows import record_from
from valetkey_hookspecs.types import TransientRecord

from ..codec import now_us, to_json, to_us
from ..db import Database

COLUMNS = "kind, key, owner, data, ciphertext, wrapped_key, key_id, expires_at, created_at"


def _missing(kind: str, key: str) -> NotFound:
    return NotFound(f"{kind} record {key!r} not found (missing, expired or used)")


class PostgresTransient:
    """``TransientRepo`` on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, record: TransientRecord) -> None:
        """Insert or replace (by kind and key)."""
        sealed = record.sealed
        await self._db.execute(
            f"INSERT INTO transient ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner, "
            "data = excluded.data, ciphertext = excluded.ciphertext, "
            "wrapped_key = excluded.wrapped_key, key_id = excluded.key_id, "
            "expires_at = excluded.expires_at, created_at = excluded.created_at",
            record.kind,
            record.key,
            record.owner,
            to_json(record.data, f"data of {record.kind} record {record.key!r}"),
            None if sealed is None else sealed.ciphertext,
            None if sealed is None else sealed.wrapped_key,
            None if sealed is None else sealed.key_id,
            to_us(record.expires_at, f"expires_at of {record.kind} record"),
            to_us(record.created_at, f"created_at of {record.kind} record"),
        )

    async def get(self, kind: str, key: str) -> TransientRecord:
        """``NotFound`` if missing or expired."""
        row = await self._db.fetchrow(
            f"SELECT {COLUMNS} FROM transient WHERE kind = $1 AND key = $2 AND expires_at > $3",
            kind,
            key,
            now_us(),
        )
        if row is None:
            raise _missing(kind, key)
        return record_from(row)

    async def take(self, kind: str, key: str) -> TransientRecord:
        """Get and delete in one statement (single use); ``NotFound`` if missing, expired or
        taken."""
        row = await self._db.fetchrow(
            "DELETE FROM transient WHERE kind = $1 AND key = $2 AND expires_at > $3 "
            f"RETURNING {COLUMNS}",
            kind,
            key,
            now_us(),
        )
        if row is None:
            raise _missing(kind, key)
        return record_from(row)

    async def delete(self, kind: str, key: str) -> None:
        """No error if missing."""
        await self._db.execute("DELETE FROM transient WHERE kind = $1 AND key = $2", kind, key)

    async def purge_expired(self, now: datetime) -> int:
        """Delete every record expired at ``now``; return how many."""
        return await self._db.execute(
            "DELETE FROM transient WHERE expires_at <= $1", to_us(now, "now")
        )
