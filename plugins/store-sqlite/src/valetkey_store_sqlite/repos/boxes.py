"""Box manager sessions: status, the auth page's token (hashed) and lifecycle hook state."""

from __future__ import annotations

import builtins

from valetkey_hookspecs.errors import Conflict, NotFound
from valetkey_hookspecs.sqlrows import session_from
from valetkey_hookspecs.types import BoxSession, BoxStatus

from ..codec import enum_value, to_json, to_us
from ..db import Database
from ._sql import where

COLUMNS = (
    "box_id, token_hash, image, runtime, status, description, spoke, error, session_url, "
    "hook_state, created_at, updated_at"
)


class SqliteBoxSessions:
    """``BoxSessionRepo`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, session: BoxSession) -> None:
        """Insert or replace (by box id); ``Conflict`` if another box has the same token."""
        await self._db.execute(
            f"INSERT INTO box_sessions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (box_id) DO UPDATE SET token_hash = excluded.token_hash, "
            "image = excluded.image, runtime = excluded.runtime, status = excluded.status, "
            "description = excluded.description, spoke = excluded.spoke, "
            "error = excluded.error, session_url = excluded.session_url, "
            "hook_state = excluded.hook_state, created_at = excluded.created_at, "
            "updated_at = excluded.updated_at",
            (
                session.box_id,
                session.token_hash,
                session.image,
                session.runtime,
                enum_value(BoxStatus, session.status, "box status"),
                session.description,
                session.spoke,
                session.error,
                session.session_url,
                to_json(session.hook_state, f"hook state of box {session.box_id!r}"),
                to_us(session.created_at, "box created_at"),
                to_us(session.updated_at, "box updated_at"),
            ),
            errors={
                "box_sessions.token_hash": Conflict(
                    f"box {session.box_id!r}: another box has the same auth-page token"
                )
            },
        )

    async def get(self, box_id: str) -> BoxSession:
        """``NotFound`` if missing."""
        row = await self._db.fetchone(
            f"SELECT {COLUMNS} FROM box_sessions WHERE box_id = ?", (box_id,)
        )
        if row is None:
            raise NotFound(f"box {box_id!r} not found")
        return session_from(row)

    async def find_by_token(self, token_hash: str) -> BoxSession:
        """``NotFound`` if no session has this auth-page token."""
        row = await self._db.fetchone(
            f"SELECT {COLUMNS} FROM box_sessions WHERE token_hash = ?", (token_hash,)
        )
        if row is None:
            raise NotFound("no box session matches this token")
        return session_from(row)

    async def list(self, *, spoke: str | None = None) -> builtins.list[BoxSession]:
        """Oldest first; ``spoke`` filters."""
        clause, params = where({"spoke = ?": spoke})
        rows = await self._db.fetchall(
            f"SELECT {COLUMNS} FROM box_sessions {clause} ORDER BY created_at, box_id", params
        )
        return [session_from(row) for row in rows]

    async def delete(self, box_id: str) -> None:
        """No error if missing."""
        await self._db.execute("DELETE FROM box_sessions WHERE box_id = ?", (box_id,))
