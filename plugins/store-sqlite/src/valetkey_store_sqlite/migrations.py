"""Versioned schema migrations of the SQLite store.

``MIGRATIONS[i]`` is the SQL script that takes a database from version ``i`` to ``i + 1``; the
applied version lives in ``PRAGMA user_version``. ``apply_migrations`` runs every pending script
and the version bump inside one ``BEGIN IMMEDIATE`` transaction, so two processes opening the same
new file apply each script once, and a failing script leaves the database as it was.

Never edit a released script: append a new one.

Conventions: times are INTEGER microseconds since the epoch (UTC); mappings are JSON text;
sealed values are ``ciphertext`` / ``wrapped_key`` BLOBs plus ``key_id``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from valetkey_hookspecs.errors import PluginError

V1 = """
CREATE TABLE connections (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    connector   TEXT NOT NULL,
    status      TEXT NOT NULL,
    label       TEXT NOT NULL,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    metadata    TEXT NOT NULL
);
CREATE INDEX connections_owner ON connections (owner, id);
CREATE INDEX connections_connector ON connections (connector, id);

CREATE TABLE credentials (
    id             TEXT PRIMARY KEY,
    connection_id  TEXT NOT NULL UNIQUE REFERENCES connections (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    ciphertext     BLOB NOT NULL,
    wrapped_key    BLOB NOT NULL,
    key_id         TEXT NOT NULL,
    expires_at     INTEGER,
    version        INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX credentials_expires ON credentials (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX credentials_key ON credentials (key_id);

CREATE TABLE audit (
    seq            INTEGER PRIMARY KEY,
    at             INTEGER NOT NULL,
    action         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    owner          TEXT,
    connection_id  TEXT,
    detail         TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_owner ON audit (owner, seq) WHERE owner IS NOT NULL;
CREATE INDEX audit_connection ON audit (connection_id, seq) WHERE connection_id IS NOT NULL;

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
);
CREATE INDEX api_tokens_owner ON api_tokens (owner, created_at);

CREATE TABLE proxy_runs (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    grants        TEXT NOT NULL,
    policy        TEXT NOT NULL,
    container_id  TEXT,
    created_at    INTEGER NOT NULL,
    data          TEXT NOT NULL
);

CREATE TABLE box_sessions (
    box_id       TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    image        TEXT NOT NULL,
    runtime      TEXT NOT NULL,
    status       TEXT NOT NULL,
    description  TEXT NOT NULL,
    spoke        TEXT,
    error        TEXT,
    session_url  TEXT,
    hook_state   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX box_sessions_spoke ON box_sessions (spoke, created_at);

CREATE TABLE transient (
    kind         TEXT NOT NULL,
    key          TEXT NOT NULL,
    owner        TEXT,
    data         TEXT NOT NULL,
    ciphertext   BLOB,
    wrapped_key  BLOB,
    key_id       TEXT,
    expires_at   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX transient_expires ON transient (expires_at);

CREATE TABLE spokes (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    credential_hash  TEXT NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL,
    last_seen_at     INTEGER,
    data             TEXT NOT NULL
);

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_by     TEXT
);

CREATE TABLE relays (
    id                  TEXT PRIMARY KEY,
    machine_token_hash  TEXT NOT NULL,
    owner               TEXT NOT NULL,
    created_at          INTEGER NOT NULL
);

CREATE TABLE relay_tokens (
    id          TEXT PRIMARY KEY,
    relay_id    TEXT NOT NULL REFERENCES relays (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (relay_id, token_hash)
);
"""

#: every schema version's script, oldest first; the schema version is ``len(MIGRATIONS)``
MIGRATIONS: tuple[str, ...] = (V1,)


def statements(script: str) -> Iterator[str]:
    """Split a script into complete SQL statements (``sqlite3.complete_statement`` decides)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise PluginError(f"migration script ends with an incomplete statement: {pending[:60]!r}")


def user_version(conn: sqlite3.Connection) -> int:
    """The applied schema version."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Apply pending migrations in one transaction on an autocommit connection; return the version.

    ``PluginError`` if the database was written by a newer schema than ``migrations`` knows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = user_version(conn)
        if current > len(migrations):
            raise PluginError(
                f"the database schema is version {current}, newer than this "
                f"valetkey-store-sqlite knows ({len(migrations)}): upgrade the plugin"
            )
        for version in range(current, len(migrations)):
            for statement in statements(migrations[version]):
                conn.execute(statement)
        if current != len(migrations):
            # PRAGMA takes no bound parameters; the value is an int we computed
            conn.execute(f"PRAGMA user_version = {len(migrations):d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(migrations)
