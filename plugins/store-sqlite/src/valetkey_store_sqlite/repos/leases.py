"""Named, expiring locks shared by every process on one database (single-flight refresh).

``acquire`` is one atomic statement: an upsert whose update only happens when the lease has
expired or is already the caller's, and whose ``RETURNING`` row says whether it did. Expiry is
compared with this machine's clock, which every process on one SQLite file shares.
"""

from __future__ import annotations

from datetime import timedelta

from valetkey_hookspecs.errors import InvalidInput
from valetkey_hookspecs.types import utcnow

from ..codec import to_us
from ..db import Database


class SqliteLeases:
    """``Leases`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take the lease if free, expired or already held by ``holder`` (renewing it)."""
        if not ttl > 0:
            raise InvalidInput(f"lease {name!r}: ttl must be a positive number of seconds")
        now = utcnow()
        row = await self._db.fetchone(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE leases.holder = excluded.holder OR leases.expires_at <= ? "
            "RETURNING holder",
            (name, holder, to_us(now + timedelta(seconds=ttl), "expiry"), to_us(now, "now")),
        )
        return row is not None

    async def release(self, name: str, holder: str) -> None:
        """Give the lease back if ``holder`` holds it (otherwise nothing happens)."""
        await self._db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    async def holder(self, name: str) -> str | None:
        """Who holds an unexpired lease, if anyone."""
        row = await self._db.fetchone(
            "SELECT holder FROM leases WHERE name = ? AND expires_at > ?",
            (name, to_us(utcnow(), "now")),
        )
        return None if row is None else str(row[0])
