"""The append-only, hash-chained audit log (``valetkey_hookspecs.audit``).

``append_many`` is one transaction that first takes a transaction-level advisory lock (one key
per schema), then reads the head and inserts after it: appends from every server on the database
queue on that lock, so the chain never forks. ``at`` is normalised to UTC and ``detail`` to its
JSON form before hashing, so the event returned, stored and listed later hash the same.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from valetkey_hookspecs.audit import GENESIS, audit_hash
from valetkey_hookspecs.errors import InvalidInput
from valetkey_hookspecs.sqlrows import event_from
from valetkey_hookspecs.types import AuditEntry, AuditEvent, utcnow

from ..codec import from_json, from_us, to_us
from ..db import Database
from ..migrations import lock_key
from ._sql import where

if TYPE_CHECKING:
    import asyncpg

COLUMNS = "seq, at, action, actor, owner, connection_id, detail, prev_hash, hash"


def _detail_json(detail: Mapping[str, Any] | None) -> str:
    # the same fallback (``default=str``) as audit_hash, so what is stored is what was hashed
    try:
        return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"audit detail must be JSON data: {exc}") from None


class PostgresAuditLog:
    """``AuditLog`` on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock_key = lock_key("audit", db.config.schema)

    async def append(
        self,
        action: str,
        *,
        actor: str,
        owner: str | None = None,
        connection_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEvent:
        """Append atomically after the current head, computing ``prev_hash`` and ``hash``."""
        entry = AuditEntry(action, actor, owner, connection_id, dict(detail or {}), at)
        (event,) = await self.append_many([entry])
        return event

    async def append_many(self, entries: Sequence[AuditEntry]) -> builtins.list[AuditEvent]:
        """Append ``entries`` in one transaction under the audit lock, chained in order."""
        if not entries:
            return []
        prepared = []
        for entry in entries:
            when_us = to_us(entry.at if entry.at is not None else utcnow(), "audit at")
            if entry.detail:
                detail_text = _detail_json(entry.detail)
                clean: Mapping[str, Any] = from_json(detail_text)
            else:
                detail_text, clean = "{}", {}
            prepared.append((entry, when_us, from_us(when_us), detail_text, clean))

        async def write(conn: asyncpg.Connection) -> builtins.list[AuditEvent]:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
            head = await conn.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            seq, prev = (int(head[0]), str(head[1])) if head is not None else (0, GENESIS)
            events, rows = [], []
            for entry, when_us, when, detail_text, clean_detail in prepared:
                seq += 1
                digest = audit_hash(
                    prev,
                    seq=seq,
                    at=when,
                    action=entry.action,
                    actor=entry.actor,
                    owner=entry.owner,
                    connection_id=entry.connection_id,
                    detail=clean_detail,
                )
                rows.append(
                    (
                        seq,
                        when_us,
                        entry.action,
                        entry.actor,
                        entry.owner,
                        entry.connection_id,
                        detail_text,
                        prev,
                        digest,
                    )
                )
                events.append(
                    AuditEvent(
                        seq=seq,
                        at=when,
                        action=entry.action,
                        actor=entry.actor,
                        owner=entry.owner,
                        connection_id=entry.connection_id,
                        detail=clean_detail,
                        prev_hash=prev,
                        hash=digest,
                    )
                )
                prev = digest
            await conn.executemany(
                f"INSERT INTO audit ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", rows
            )
            return events

        return await self._db.transaction(write)

    async def list(
        self,
        *,
        owner: str | None = None,
        connection_id: str | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> builtins.list[AuditEvent]:
        """Events in ``seq`` order."""
        if limit <= 0:
            return []
        clause, params = where(
            {"owner = {}": owner, "connection_id = {}": connection_id, "seq > {}": after_seq}
        )
        rows = await self._db.fetch(
            f"SELECT {COLUMNS} FROM audit {clause} ORDER BY seq LIMIT ${len(params) + 1}",
            *params,
            limit,
        )
        return [event_from(row) for row in rows]
