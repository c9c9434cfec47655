"""Named, expiring locks shared by every server on one database (single-flight refresh, claimed
refresh-ahead work).

Expiry is measured with the database server's clock (``clock_timestamp()``), the one clock every
server on several hosts shares, so a host whose clock drifts cannot steal or overstay a lease.
``acquire`` is one atomic upsert whose update only happens when the lease has expired or is
already the caller's; its ``RETURNING`` row says whether it did.
"""

from __future__ import annotations

from valetkey_hookspecs.errors import InvalidInput

from ..db import Database

#: the database's clock in stored form (microseconds since the epoch)
DB_NOW_US = "(extract(epoch from clock_timestamp()) * 1000000)::bigint"


class PostgresLeases:
    """``Leases`` on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take the lease if free, expired or already held by ``holder`` (renewing it)."""
        if not ttl > 0:
            raise InvalidInput(f"lease {name!r}: ttl must be a positive number of seconds")
        row = await self._db.fetchrow(
            f"INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, {DB_NOW_US} + $3) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            f"WHERE leases.holder = excluded.holder OR leases.expires_at <= {DB_NOW_US} "
            "RETURNING holder",
            name,
            holder,
            int(ttl * 1_000_000),
        )
        return row is not None

    async def release(self, name: str, holder: str) -> None:
        """Give the lease back if ``holder`` holds it (otherwise nothing happens)."""
        await self._db.execute("DELETE FROM leases WHERE name = $1 AND holder = $2", name, holder)

    async def holder(self, name: str) -> str | None:
        """Who holds an unexpired lease, if anyone."""
        row = await self._db.fetchrow(
            f"SELECT holder FROM leases WHERE name = $1 AND expires_at > {DB_NOW_US}", name
        )
        return None if row is None else str(row[0])
