"""Relays served by ``relay-server`` (machine tokens stored hashed) and their access tokens;
deleting a relay deletes its access tokens (foreign key cascade)."""

from __future__ import annotations

import builtins

from valetkey_hookspecs.errors import Conflict, NotFound
from valetkey_hookspecs.sqlrows import access_token_from, relay_from
from valetkey_hookspecs.types import RelayAccessToken, RelayRecord

from ..codec import to_us
from ..db import Database

COLUMNS = "id, machine_token_hash, owner, created_at"
ACCESS_COLUMNS = "id, relay_id, token_hash, name, created_at"


class SqliteRelays:
    """``RelayRepo`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, relay: RelayRecord) -> None:
        """Insert or replace (by id; its access tokens stay)."""
        await self._db.execute(
            f"INSERT INTO relays ({COLUMNS}) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET machine_token_hash = excluded.machine_token_hash, "
            "owner = excluded.owner, created_at = excluded.created_at",
            (relay.id, relay.machine_token_hash, relay.owner, to_us(relay.created_at, "relay")),
        )

    async def get(self, relay_id: str) -> RelayRecord:
        """``NotFound`` if missing."""
        row = await self._db.fetchone(f"SELECT {COLUMNS} FROM relays WHERE id = ?", (relay_id,))
        if row is None:
            raise NotFound(f"relay {relay_id!r} not found")
        return relay_from(row)

    async def list(self) -> builtins.list[RelayRecord]:
        """Oldest first."""
        rows = await self._db.fetchall(f"SELECT {COLUMNS} FROM relays ORDER BY created_at, id")
        return [relay_from(row) for row in rows]

    async def delete(self, relay_id: str) -> None:
        """Delete the relay and its access tokens; ``NotFound`` if missing."""
        row = await self._db.fetchone("DELETE FROM relays WHERE id = ? RETURNING id", (relay_id,))
        if row is None:
            raise NotFound(f"relay {relay_id!r} not found")

    async def add_access_token(self, token: RelayAccessToken) -> None:
        """Insert an access token; ``NotFound`` if the relay is missing, ``Conflict`` if the id
        (or this relay's token hash) exists."""
        await self._db.execute(
            f"INSERT INTO relay_tokens ({ACCESS_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (
                token.id,
                token.relay_id,
                token.token_hash,
                token.name,
                to_us(token.created_at, "relay access token created_at"),
            ),
            errors={
                "FOREIGN KEY": NotFound(f"relay {token.relay_id!r} not found"),
                "relay_tokens.id": Conflict(f"relay access token {token.id!r} exists already"),
                "relay_tokens.relay_id": Conflict(
                    f"relay access token {token.id!r}: relay {token.relay_id!r} has a token "
                    "with the same hash"
                ),
            },
        )

    async def find_access_token(self, relay_id: str, token_hash: str) -> RelayAccessToken:
        """``NotFound`` if unknown for this relay."""
        row = await self._db.fetchone(
            f"SELECT {ACCESS_COLUMNS} FROM relay_tokens WHERE relay_id = ? AND token_hash = ?",
            (relay_id, token_hash),
        )
        if row is None:
            raise NotFound(f"no access token of relay {relay_id!r} matches")
        return access_token_from(row)

    async def list_access_tokens(self, relay_id: str) -> builtins.list[RelayAccessToken]:
        """Oldest first."""
        rows = await self._db.fetchall(
            f"SELECT {ACCESS_COLUMNS} FROM relay_tokens WHERE relay_id = ? ORDER BY created_at, id",
            (relay_id,),
        )
        return [access_token_from(row) for row in rows]

    async def delete_access_token(self, token_id: str) -> None:
        """``NotFound`` if missing."""
        row = await self._db.fetchone(
            "DELETE FROM relay_tokens WHERE id = ? RETURNING id", (token_id,)
        )
        if row is None:
            raise NotFound(f"relay access token {token_id!r} not found")
