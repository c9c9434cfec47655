"""REST API bearer tokens, bound to one owner; only each token's SHA-256 is stored."""

from __future__ import annotations

import builtins
from datetime import datetime

from valetkey_hookspecs.errors import Conflict, NotFound
from valetkey_hookspecs.sqlrows import token_from
from valetkey_hookspecs.types import ApiToken

from ..codec import opt_to_us, to_us
from ..db import Database
from ._sql import where

COLUMNS = "id, owner, token_hash, name, created_at, last_used_at"


class SqliteApiTokens:
    """``ApiTokenRepo`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, token: ApiToken) -> ApiToken:
        """Insert; ``Conflict`` if the id or hash exists."""
        await self._db.execute(
            f"INSERT INTO api_tokens ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (
                token.id,
                token.owner,
                token.token_hash,
                token.name,
                to_us(token.created_at, "api token created_at"),
                opt_to_us(token.last_used_at, "api token last_used_at"),
            ),
            errors={
                "api_tokens.id": Conflict(f"api token {token.id!r} exists already"),
                "api_tokens.token_hash": Conflict(
                    f"api token {token.id!r}: another token has the same hash"
                ),
            },
        )
        return token

    async def find(self, token_hash: str) -> ApiToken:
        """By hash; ``NotFound`` if none (the message does not repeat the hash)."""
        row = await self._db.fetchone(
            f"SELECT {COLUMNS} FROM api_tokens WHERE token_hash = ?", (token_hash,)
        )
        if row is None:
            raise NotFound("no api token matches")
        return token_from(row)

    async def list(self, owner: str | None = None) -> builtins.list[ApiToken]:
        """Tokens, oldest first."""
        clause, params = where({"owner = ?": owner})
        rows = await self._db.fetchall(
            f"SELECT {COLUMNS} FROM api_tokens {clause} ORDER BY created_at, id", params
        )
        return [token_from(row) for row in rows]

    async def touch(self, token_id: str, at: datetime) -> None:
        """Record a use (a token deleted meanwhile is not an error)."""
        await self._db.execute(
            "UPDATE api_tokens SET last_used_at = ? WHERE id = ?",
            (to_us(at, "api token last_used_at"), token_id),
        )

    async def delete(self, token_id: str, owner: str | None = None) -> None:
        """``NotFound`` if missing or foreign."""
        clause, params = where({"id = ?": token_id, "owner = ?": owner})
        row = await self._db.fetchone(f"DELETE FROM api_tokens {clause} RETURNING id", params)
        if row is None:
            raise NotFound(f"api token {token_id!r} not found")
