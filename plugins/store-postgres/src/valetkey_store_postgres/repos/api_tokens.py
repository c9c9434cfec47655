"""REST API bearer tokens, bound to one owner; only each token's SHA-256 is stored."""

from __future__ import annotations

import builtins
from datetime import datetime

from valetkey_hookspecs.errors import Conflict, NotFound
from valetkey_hookspecs.sqlrows import token_from
from valetkey_hookspecs.types import ApiToken

from ..codec import opt_to_us, to_us
from ..db import Database

COLUMNS = "id, owner, token_hash, name, created_at, last_used_at"


class PostgresApiTokens:
    """``ApiTokenRepo`` on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, token: ApiToken) -> ApiToken:
        """Insert; ``Conflict`` if the id or hash exists."""
        await self._db.execute(
            f"INSERT INTO api_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
            token.id,
            token.owner,
            token.token_hash,
            token.name,
            to_us(token.created_at, "api token created_at"),
            opt_to_us(token.last_used_at, "api token last_used_at"),
            errors={
                "api_tokens_pkey": Conflict(f"api token {token.id!r} exists already"),
                "api_tokens_token_hash_key": Conflict(
                    f"api token {token.id!r}: another token has the same hash"
                ),
            },
        )
        return token

    async def find(self, token_hash: str) -> ApiToken:
        """By hash; ``NotFound`` if none (the message does not repeat the hash)."""
        row = await self._db.fetchrow(
            f"SELECT {COLUMNS} FROM api_tokens WHERE token_hash = $1", token_hash
        )
        if row is None:
            raise NotFound("no api token matches")
        return token_from(row)

    async def list(self, owner: str | None = None) -> builtins.list[ApiToken]:
        """Tokens, oldest first."""
        rows = await self._db.fetch(
            f"SELECT {COLUMNS} FROM api_tokens WHERE $1::text IS NULL OR owner = $1 "
            "ORDER BY created_at, id",
            owner,
        )
        return [token_from(row) for row in rows]

    async def touch(self, token_id: str, at: datetime) -> None:
        """Record a use (a token deleted meanwhile is not an error)."""
        await self._db.execute(
            "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2",
            to_us(at, "api token last_used_at"),
            token_id,
        )

    async def delete(self, token_id: str, owner: str | None = None) -> None:
        """``NotFound`` if missing or foreign."""
        row = await self._db.fetchrow(
            "DELETE FROM api_tokens WHERE id = $1 AND ($2::text IS NULL OR owner = $2) "
            "RETURNING id",
            token_id,
            owner,
        )
        if row is None:
            raise NotFound(f"api token {token_id!r} not found")
