"""``import_sqlite``: copy every record of a SQLite store file into this PostgreSQL store, for
``valetkey store migrate --to postgres``.

Rows are copied as they are — sealed credentials as their ciphertext, wrapped key and key id
bytes, nothing decrypted, no sealer involved — because both stores use the same column forms
(``codec.py``). The copy is one PostgreSQL transaction: every insert is ``ON CONFLICT DO
NOTHING``, then the row counts and a SHA-256 checksum of every table are compared between the
SQLite snapshot and PostgreSQL, and any difference rolls the whole copy back. So a re-run after a
completed copy changes nothing and verifies again, and a re-run after an interrupted one finishes
it. Leases are not copied: they are locks of running processes, not records.

The SQLite file is read in one read transaction (a consistent snapshot) through a read-only
connection. Stop the servers writing to it first.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valetkey_hookspecs.errors import Conflict, InvalidInput, PluginError

if TYPE_CHECKING:
    import asyncpg

    from .db import Database

#: (table, primary-key columns, every column), parents before children
TABLES: tuple[tuple[str, str, str], ...] = (
    (
        "connections",
        "id",
        "id, owner, connector, status, label, error, created_at, updated_at, metadata",
    ),
    (
        "credentials",
        "id",
        "id, connection_id, kind, ciphertext, wrapped_key, key_id, expires_at, version, updated_at",
    ),
    ("audit", "seq", "seq, at, action, actor, owner, connection_id, detail, prev_hash, hash"),
    ("api_tokens", "id", "id, owner, token_hash, name, created_at, last_used_at"),
    ("proxy_runs", "id", "id, owner, grants, policy, container_id, created_at, data"),
    (
        "box_sessions",
        "box_id",
        "box_id, token_hash, image, runtime, status, description, spoke, error, session_url, "
        "hook_state, created_at, updated_at",
    ),
    (
        "transient",
        "kind, key",
        "kind, key, owner, data, ciphertext, wrapped_key, key_id, expires_at, created_at",
    ),
    ("spokes", "id", "id, name, credential_hash, created_at, last_seen_at, data"),
    ("join_tokens", "id", "id, token_hash, expires_at, created_at, used_at, used_by"),
    ("relays", "id", "id, machine_token_hash, owner, created_at"),
    ("relay_tokens", "id", "id, relay_id, token_hash, name, created_at"),
)
#: the SQLite store schema versions this importer reads
SQLITE_VERSIONS = (1,)


@dataclass
class ImportReport:
    """What a copy found and did, per table."""

    source_rows: dict[str, int] = field(default_factory=dict)
    copied: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def checksum(self) -> str:
        """One SHA-256 over every table's checksum, in table order."""
        total = hashlib.sha256()
        for table, _pk, _cols in TABLES:
            total.update(f"{table}={self.checksums.get(table, '')};".encode())
        return total.hexdigest()

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "tables": {
                t: {
                    "rows": self.source_rows.get(t, 0),
                    "copied": self.copied.get(t, 0),
                    "sha256": self.checksums.get(t, ""),
                }
                for t, _pk, _cols in TABLES
            },
            "checksum": self.checksum,
            "verified": True,
        }


def _token(value: Any) -> str:
    """A value's canonical form for the checksum (the same from sqlite3 and asyncpg)."""
    if value is None:
        return "n"
    if isinstance(value, bool):  # pragma: no cover - no boolean columns today
        return f"i:{int(value)}"
    if isinstance(value, int):
        return f"i:{value}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "b:" + bytes(value).hex()
    if isinstance(value, str):
        return "s:" + json.dumps(value, ensure_ascii=False)
    raise PluginError(f"unexpected column value of type {type(value).__name__}")


def table_checksum(rows: Sequence[Sequence[Any]]) -> str:
    """SHA-256 over rows (already in primary-key order), column by column."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(("|".join(_token(v) for v in row) + "\n").encode())
    return digest.hexdigest()


def read_sqlite(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows in primary-key order, from one read transaction on a read-only
    connection; ``InvalidInput`` for a missing file or an unknown schema version."""
    if not path.is_file():
        raise InvalidInput(f"no SQLite store at {path}")
    raw = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        raw.execute("BEGIN")
        version = int(raw.execute("PRAGMA user_version").fetchone()[0])
        if version not in SQLITE_VERSIONS:
            raise InvalidInput(
                f"the SQLite store {path} has schema version {version}; this importer reads "
                f"{', '.join(map(str, SQLITE_VERSIONS))}: upgrade valetkey-store-postgres"
            )
        tables = {
            table: [tuple(r) for r in raw.execute(f"SELECT {cols} FROM {table} ORDER BY {pk}")]
            for table, pk, cols in TABLES
        }
        raw.execute("COMMIT")
    except sqlite3.Error as exc:
        raise PluginError(f"cannot read the SQLite store {path}: {exc}") from None
    finally:
        raw.close()
    return tables


async def import_sqlite(path: Path, db: Database) -> ImportReport:
    """Copy the SQLite store at ``path`` into ``db`` and verify it (see the module docstring)."""
    source = read_sqlite(path)
    report = ImportReport()
    for table, _pk, _cols in TABLES:
        report.source_rows[table] = len(source[table])
        report.checksums[table] = table_checksum(source[table])

    async def copy(conn: asyncpg.Connection) -> None:
        for table, pk, cols in TABLES:
            rows = source[table]
            before = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            if rows:
                marks = ", ".join(f"${n}" for n in range(1, len(cols.split(", ")) + 1))
                await conn.executemany(
                    f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows
                )
            after = await conn.fetch(f"SELECT {cols} FROM {table} ORDER BY {pk}")
            report.copied[table] = len(after) - before
            if len(after) != len(rows) or table_checksum(after) != report.checksums[table]:
                raise Conflict(
                    f"table {table}: PostgreSQL holds {len(after)} rows that differ from the "
                    f"SQLite store's {len(rows)} (was it written to since?); nothing was copied"
                )

    await db.transaction(copy)
    return report
