"""Spokes of a hub (credentials stored hashed) and their one-time join tokens.

``consume_join_token`` is one ``UPDATE ... RETURNING`` that only matches an unused, unexpired
token: two spokes racing for one token cannot both enroll.
"""

from __future__ import annotations

import builtins
from datetime import datetime

from valetkey_hookspecs.errors import Conflict, NotFound
from valetkey_hookspecs.sqlrows import join_token_from, spoke_from
from valetkey_hookspecs.types import JoinToken, Spoke

from ..codec import opt_to_us, to_json, to_us
from ..db import Database

COLUMNS = "id, name, credential_hash, created_at, last_seen_at, data"
JOIN_COLUMNS = "id, token_hash, expires_at, created_at, used_at, used_by"


class SqliteSpokes:
    """``SpokeRepo`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, spoke: Spoke) -> None:
        """Insert or replace (by id); ``Conflict`` if another spoke has the name or the
        credential."""
        await self._db.execute(
            f"INSERT INTO spokes ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
            "credential_hash = excluded.credential_hash, created_at = excluded.created_at, "
            "last_seen_at = excluded.last_seen_at, data = excluded.data",
            (
                spoke.id,
                spoke.name,
                spoke.credential_hash,
                to_us(spoke.created_at, "spoke created_at"),
                opt_to_us(spoke.last_seen_at, "spoke last_seen_at"),
                to_json(spoke.data, f"data of spoke {spoke.id!r}"),
            ),
            errors={
                "spokes.name": Conflict(f"another spoke is named {spoke.name!r}"),
                "spokes.credential_hash": Conflict(
                    f"spoke {spoke.id!r}: another spoke has the same credential"
                ),
            },
        )

    async def get(self, spoke_id: str) -> Spoke:
        """``NotFound`` if missing."""
        row = await self._db.fetchone(f"SELECT {COLUMNS} FROM spokes WHERE id = ?", (spoke_id,))
        if row is None:
            raise NotFound(f"spoke {spoke_id!r} not found")
        return spoke_from(row)

    async def find_by_credential(self, credential_hash: str) -> Spoke:
        """``NotFound`` if no spoke has this credential."""
        row = await self._db.fetchone(
            f"SELECT {COLUMNS} FROM spokes WHERE credential_hash = ?", (credential_hash,)
        )
        if row is None:
            raise NotFound("no spoke has this credential")
        return spoke_from(row)

    async def list(self) -> builtins.list[Spoke]:
        """Ordered by name."""
        rows = await self._db.fetchall(f"SELECT {COLUMNS} FROM spokes ORDER BY name")
        return [spoke_from(row) for row in rows]

    async def delete(self, spoke_id: str) -> None:
        """``NotFound`` if missing."""
        row = await self._db.fetchone("DELETE FROM spokes WHERE id = ? RETURNING id", (spoke_id,))
        if row is None:
            raise NotFound(f"spoke {spoke_id!r} not found")

    async def add_join_token(self, token: JoinToken) -> None:
        """Insert a join token; ``Conflict`` if the id or hash exists."""
        await self._db.execute(
            f"INSERT INTO join_tokens ({JOIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (
                token.id,
                token.token_hash,
                to_us(token.expires_at, "join token expires_at"),
                to_us(token.created_at, "join token created_at"),
                opt_to_us(token.used_at, "join token used_at"),
                token.used_by,
            ),
            errors={
                "join_tokens.id": Conflict(f"join token {token.id!r} exists already"),
                "join_tokens.token_hash": Conflict(
                    f"join token {token.id!r}: another token has the same hash"
                ),
            },
        )

    async def consume_join_token(self, token_hash: str, now: datetime, used_by: str) -> JoinToken:
        """Mark a valid token used, atomically; ``NotFound`` if unknown, used or expired."""
        at = to_us(now, "now")
        row = await self._db.fetchone(
            "UPDATE join_tokens SET used_at = ?, used_by = ? "
            "WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? "
            f"RETURNING {JOIN_COLUMNS}",
            (at, used_by, token_hash, at),
        )
        if row is None:
            raise NotFound("no valid join token matches (unknown, used or expired)")
        return join_token_from(row)

    async def list_join_tokens(self) -> builtins.list[JoinToken]:
        """Oldest first."""
        rows = await self._db.fetchall(
            f"SELECT {JOIN_COLUMNS} FROM join_tokens ORDER BY created_at, id"
        )
        return [join_token_from(row) for row in rows]

    async def revoke_join_token(self, token_id: str) -> None:
        """Delete the token; ``NotFound`` if missing."""
        row = await self._db.fetchone(
            "DELETE FROM join_tokens WHERE id = ? RETURNING id", (token_id,)
        )
        if row is None:
            raise NotFound(f"join token {token_id!r} not found")
