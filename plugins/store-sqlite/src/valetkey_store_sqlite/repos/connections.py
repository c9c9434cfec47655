"""Connections, always scoped by owner (``owner=None`` is system access); a foreign id is
"not found", never "forbidden". Deleting a connection cascades to its credential."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from valetkey_hookspecs.errors import Conflict, NotFound
from valetkey_hookspecs.sqlrows import connection_from
from valetkey_hookspecs.types import Connection, ConnectionStatus

from ..codec import enum_value, now_us, to_json, to_us
from ..db import Database
from ._sql import where

COLUMNS = "id, owner, connector, status, label, error, created_at, updated_at, metadata"


def _missing(connection_id: str) -> NotFound:
    return NotFound(f"connection {connection_id!r} not found")


def _owned(owner: str | None) -> tuple[str, tuple[Any, ...]]:
    return ("AND owner = ?", (owner,)) if owner is not None else ("", ())


class SqliteConnections:
    """``ConnectionRepo`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, connection: Connection) -> Connection:
        """Insert; ``Conflict`` if the id exists."""
        await self._db.execute(
            f"INSERT INTO connections ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                connection.id,
                connection.owner,
                connection.connector,
                enum_value(ConnectionStatus, connection.status, "connection status"),
                connection.label,
                connection.error,
                to_us(connection.created_at, "connection created_at"),
                to_us(connection.updated_at, "connection updated_at"),
                to_json(connection.metadata, f"metadata of connection {connection.id!r}"),
            ),
            errors={"connections.id": Conflict(f"connection {connection.id!r} exists already")},
        )
        return connection

    async def get(self, connection_id: str, owner: str | None = None) -> Connection:
        """``NotFound`` if missing or owned by someone else."""
        scope, params = _owned(owner)
        row = await self._db.fetchone(
            f"SELECT {COLUMNS} FROM connections WHERE id = ? {scope}", (connection_id, *params)
        )
        if row is None:
            raise _missing(connection_id)
        return connection_from(row)

    async def list(
        self,
        owner: str | None = None,
        *,
        connector: str | None = None,
        status: ConnectionStatus | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> builtins.list[Connection]:
        """Ordered by id; ``after`` is the last id of the previous page."""
        if limit <= 0:
            return []
        status_text = None if status is None else enum_value(ConnectionStatus, status, "status")
        clause, params = where(
            {
                "owner = ?": owner,
                "connector = ?": connector,
                "status = ?": status_text,
                "id > ?": after,
            }
        )
        rows = await self._db.fetchall(
            f"SELECT {COLUMNS} FROM connections {clause} ORDER BY id LIMIT ?", (*params, limit)
        )
        return [connection_from(row) for row in rows]

    async def set_status(
        self, connection_id: str, status: ConnectionStatus, error: str | None = None
    ) -> Connection:
        """Change the status and error text (None clears it); ``NotFound`` if missing."""
        row = await self._db.fetchone(
            "UPDATE connections SET status = ?, error = ?, updated_at = ? WHERE id = ? "
            f"RETURNING {COLUMNS}",
            (enum_value(ConnectionStatus, status, "status"), error, now_us(), connection_id),
        )
        if row is None:
            raise _missing(connection_id)
        return connection_from(row)

    async def update(
        self,
        connection_id: str,
        owner: str | None = None,
        *,
        label: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Connection:
        """Change label / metadata (None leaves a field as it is); ``NotFound`` if missing or
        foreign."""
        scope, params = _owned(owner)
        meta = None if metadata is None else to_json(metadata, f"metadata of {connection_id!r}")
        row = await self._db.fetchone(
            "UPDATE connections SET label = coalesce(?, label), metadata = coalesce(?, metadata), "
            f"updated_at = ? WHERE id = ? {scope} RETURNING {COLUMNS}",
            (label, meta, now_us(), connection_id, *params),
        )
        if row is None:
            raise _missing(connection_id)
        return connection_from(row)

    async def delete(self, connection_id: str, owner: str | None = None) -> None:
        """Delete the connection and (by cascade) its credential; ``NotFound`` if missing or
        foreign."""
        scope, params = _owned(owner)
        row = await self._db.fetchone(
            f"DELETE FROM connections WHERE id = ? {scope} RETURNING id",
            (connection_id, *params),
        )
        if row is None:
            raise _missing(connection_id)

    async def count(self, owner: str | None = None) -> int:
        """How many connections (of one owner, or all)."""
        clause, params = where({"owner = ?": owner})
        row = await self._db.fetchone(f"SELECT count(*) FROM connections {clause}", params)
        return int(row[0]) if row is not None else 0
