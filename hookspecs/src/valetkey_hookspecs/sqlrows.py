"""Rows of the SQL stores back into domain records: one mapper per table, shared by
store-sqlite and store-postgres (their columns are the same, see :mod:`.sqlcodec`). A row is
anything indexable by column name (``sqlite3.Row``, ``asyncpg.Record``); a prefix selects
columns of a joined table.
"""

from __future__ import annotations

from typing import Any

from .sqlcodec import from_json, from_us, opt_from_us, sealed_from
from .types import (
    ApiToken,
    AuditEvent,
    BoxSession,
    BoxStatus,
    Connection,
    ConnectionStatus,
    Credential,
    CredentialKind,
    JoinToken,
    RelayAccessToken,
    RelayRecord,
    Spoke,
    TransientRecord,
)


def token_from(row: Any) -> ApiToken:
    """An ``ApiToken`` from a row."""
    return ApiToken(
        id=row["id"],
        owner=row["owner"],
        token_hash=row["token_hash"],
        name=row["name"],
        created_at=from_us(row["created_at"]),
        last_used_at=opt_from_us(row["last_used_at"]),
    )


def event_from(row: Any) -> AuditEvent:
    """An ``AuditEvent`` from a row."""
    return AuditEvent(
        seq=row["seq"],
        at=from_us(row["at"]),
        action=row["action"],
        actor=row["actor"],
        owner=row["owner"],
        connection_id=row["connection_id"],
        detail=from_json(row["detail"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def session_from(row: Any) -> BoxSession:
    """A ``BoxSession`` from a row."""
    return BoxSession(
        box_id=row["box_id"],
        token_hash=row["token_hash"],
        image=row["image"],
        runtime=row["runtime"],
        status=BoxStatus(row["status"]),
        description=row["description"],
        spoke=row["spoke"],
        error=row["error"],
        session_url=row["session_url"],
        hook_state=from_json(row["hook_state"]),
        created_at=from_us(row["created_at"]),
        updated_at=from_us(row["updated_at"]),
    )


def connection_from(row: Any, prefix: str = "") -> Connection:
    """A ``Connection`` from a row (columns optionally prefixed, for joins)."""
    return Connection(
        id=row[f"{prefix}id"],
        owner=row[f"{prefix}owner"],
        connector=row[f"{prefix}connector"],
        status=ConnectionStatus(row[f"{prefix}status"]),
        label=row[f"{prefix}label"],
        error=row[f"{prefix}error"],
        created_at=from_us(row[f"{prefix}created_at"]),
        updated_at=from_us(row[f"{prefix}updated_at"]),
        metadata=from_json(row[f"{prefix}metadata"]),
    )


def credential_from(row: Any, prefix: str = "") -> Credential:
    """A ``Credential`` from a row (columns optionally prefixed, for joins)."""
    return Credential(
        id=row[f"{prefix}id"],
        connection_id=row[f"{prefix}connection_id"],
        kind=CredentialKind(row[f"{prefix}kind"]),
        sealed=sealed_from(
            row[f"{prefix}ciphertext"], row[f"{prefix}wrapped_key"], row[f"{prefix}key_id"]
        ),
        expires_at=opt_from_us(row[f"{prefix}expires_at"]),
        version=row[f"{prefix}version"],
        updated_at=from_us(row[f"{prefix}updated_at"]),
    )


def relay_from(row: Any) -> RelayRecord:
    """A ``RelayRecord`` from a row."""
    return RelayRecord(
        id=row["id"],
        machine_token_hash=row["machine_token_hash"],
        owner=row["owner"],
        created_at=from_us(row["created_at"]),
    )


def access_token_from(row: Any) -> RelayAccessToken:
    """A ``RelayAccessToken`` from a row."""
    return RelayAccessToken(
        id=row["id"],
        relay_id=row["relay_id"],
        token_hash=row["token_hash"],
        name=row["name"],
        created_at=from_us(row["created_at"]),
    )


def spoke_from(row: Any) -> Spoke:
    """A ``Spoke`` from a row."""
    return Spoke(
        id=row["id"],
        name=row["name"],
        credential_hash=row["credential_hash"],
        created_at=from_us(row["created_at"]),
        last_seen_at=opt_from_us(row["last_seen_at"]),
        data=from_json(row["data"]),
    )


def join_token_from(row: Any) -> JoinToken:
    """A ``JoinToken`` from a row."""
    return JoinToken(
        id=row["id"],
        token_hash=row["token_hash"],
        expires_at=from_us(row["expires_at"]),
        created_at=from_us(row["created_at"]),
        used_at=opt_from_us(row["used_at"]),
        used_by=row["used_by"],
    )


def record_from(row: Any) -> TransientRecord:
    """A ``TransientRecord`` from a row."""
    sealed = None
    if row["ciphertext"] is not None:
        sealed = sealed_from(row["ciphertext"], row["wrapped_key"], row["key_id"])
    return TransientRecord(
        kind=row["kind"],
        key=row["key"],
        owner=row["owner"],
        data=from_json(row["data"]),
        sealed=sealed,
        expires_at=from_us(row["expires_at"]),
        created_at=from_us(row["created_at"]),
    )
