"""The append-only, hash-chained audit log (``valetkey_hookspecs.audit``).

``append`` is one hop and one ``BEGIN IMMEDIATE`` transaction that reads the head and inserts
after it: the write lock is taken before the head is read, so two processes appending to one file
never fork the chain. ``at`` is normalised to UTC and ``detail`` to its JSON form before hashing,
so the event returned, the event stored and the event listed later hash the same.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from valetkey_hookspecs.audit import GENESIS, audit_hash
from valetkey_hookspecs.errors import InvalidInput
from valetkey_hookspecs.sqlrows import event_from
from valetkey_hookspecs.types import AuditEntry, AuditEvent, utcnow

from ..codec import from_json, from_us, to_us
from ..db import Database
from ._sql import where

COLUMNS = "seq, at, action, actor, owner, connection_id, detail, prev_hash, hash"


def _detail_json(detail: Mapping[str, Any] | None) -> str:
    # the same fallback (``default=str``) as audit_hash, so what is stored is what was hashed
    try:
        return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"audit detail must be JSON data: {exc}") from None


class SqliteAuditLog:
    """``AuditLog`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        """Append ``entries`` in one ``BEGIN IMMEDIATE`` transaction, chained in order."""
        if not entries:
            return []
        prepared = []
        for entry in entries:
            when_us = to_us(entry.at if entry.at is not None else utcnow(), "audit at")
            if entry.detail:
                detail_text = _detail_json(entry.detail)
                clean: Mapping[str, Any] = from_json(detail_text)
            else:  # the vend path: nothing to normalise
                detail_text, clean = "{}", {}
            # UTC, microseconds, JSON round trip: exactly what a later read returns
            prepared.append((entry, when_us, from_us(when_us), detail_text, clean))

        def write(raw: sqlite3.Connection) -> builtins.list[AuditEvent]:
            head = raw.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (head[0], head[1]) if head is not None else (0, GENESIS)
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
            raw.executemany(
                f"INSERT INTO audit ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            return events

        return await self._db.transaction_now(write)

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
            {"owner = ?": owner, "connection_id = ?": connection_id, "seq > ?": after_seq}
        )
        rows = await self._db.fetchall(
            f"SELECT {COLUMNS} FROM audit {clause} ORDER BY seq LIMIT ?", (*params, limit)
        )
        return [event_from(row) for row in rows]
