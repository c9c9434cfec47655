"""The audit log's hash chain, shared by every store so that any store's log verifies the same way.

Each event's hash is SHA-256 over the previous hash and a canonical JSON of the event's fields;
changing, removing or reordering any stored event breaks every later link.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from .types import AuditEvent

GENESIS = "0" * 64


def audit_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    action: str,
    actor: str,
    owner: str | None,
    connection_id: str | None,
    detail: Mapping[str, Any],
) -> str:
    """The hash of one audit event chained to ``prev_hash``."""
    body = json.dumps(
        {
            "seq": seq,
            "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
            "action": action,
            "actor": actor,
            "owner": owner,
            "connection_id": connection_id,
            "detail": detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def verify_chain(events: Iterable[AuditEvent], prev_hash: str = GENESIS) -> int | None:
    """Check a run of events in ``seq`` order; return the seq of the first bad one, or None."""
    expected_seq: int | None = None
    for event in events:
        if expected_seq is not None and event.seq != expected_seq:
            return event.seq
        digest = audit_hash(
            prev_hash,
            seq=event.seq,
            at=event.at,
            action=event.action,
            actor=event.actor,
            owner=event.owner,
            connection_id=event.connection_id,
            detail=event.detail,
        )
        if event.prev_hash != prev_hash or event.hash != digest:
            return event.seq
        prev_hash = event.hash
        expected_seq = event.seq + 1
    return None
