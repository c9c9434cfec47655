"""Versioned schema migrations of the PostgreSQL store, applied under an advisory lock.

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``. ``apply_migrations`` takes a
session-level advisory lock (one key per schema), reads the applied versions from
``valetkey_schema_migrations``, runs each pending script in its own transaction together with
its row in that table, and unlocks. Several servers starting at once against a new database
therefore apply each script exactly once: the first holds the lock, the others wait for it and
then find nothing left to do. Never edit a released script: append a new one.

Column conventions are the SQLite store's (see ``codec.py``): BIGINT microseconds, JSON text,
BYTEA sealed bytes.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from valetkey_hookspecs.errors import PluginError

if TYPE_CHECKING:
    import asyncpg

V1 = """
CREATE TABLE connections (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    connector   TEXT NOT NULL,
    status      TEXT NOT NULL,
    label       TEXT NOT NULL,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    metadata    TEXT NOT NULL
);
CREATE INDEX connections_owner ON connections (owner, id);
CREATE INDEX connections_connector ON connections (connector, id);

CREATE TABLE credentials (
    id             TEXT NOT NULL CONSTRAINT credentials_pkey PRIMARY KEY,
    connection_id  TEXT NOT NULL CONSTRAINT credentials_connection_key UNIQUE
                   REFERENCES connections (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    ciphertext     BYTEA NOT NULL,
    wrapped_key    BYTEA NOT NULL,
    key_id         TEXT NOT NULL,
    expires_at     BIGINT,
    version        BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX credentials_expires ON credentials (expires_at, id) WHERE expires_at IS NOT NULL;
CREATE INDEX credentials_key ON credentials (key_id, id);

CREATE TABLE audit (
    seq            BIGINT PRIMARY KEY,
    at             BIGINT NOT NULL,
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
    expires_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id            TEXT CONSTRAINT api_tokens_pkey PRIMARY KEY,
    owner         TEXT NOT NULL,
    token_hash    TEXT NOT NULL CONSTRAINT api_tokens_token_hash_key UNIQUE,
    name          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX api_tokens_owner ON api_tokens (owner, created_at);

CREATE TABLE proxy_runs (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    grants        TEXT NOT NULL,
    policy        TEXT NOT NULL,
    container_id  TEXT,
    created_at    BIGINT NOT NULL,
    data          TEXT NOT NULL
);

CREATE TABLE box_sessions (
    box_id       TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL CONSTRAINT box_sessions_token_hash_key UNIQUE,
    image        TEXT NOT NULL,
    runtime      TEXT NOT NULL,
    status       TEXT NOT NULL,
    description  TEXT NOT NULL,
    spoke        TEXT,
    error        TEXT,
    session_url  TEXT,
    hook_state   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX box_sessions_spoke ON box_sessions (spoke, created_at);

CREATE TABLE transient (
    kind         TEXT NOT NULL,
    key          TEXT NOT NULL,
    owner        TEXT,
    data         TEXT NOT NULL,
    ciphertext   BYTEA,
    wrapped_key  BYTEA,
    key_id       TEXT,
    expires_at   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX transient_expires ON transient (expires_at);

CREATE TABLE spokes (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL CONSTRAINT spokes_name_key UNIQUE,
    credential_hash  TEXT NOT NULL CONSTRAINT spokes_credential_hash_key UNIQUE,
    created_at       BIGINT NOT NULL,
    last_seen_at     BIGINT,
    data             TEXT NOT NULL
);

CREATE TABLE join_tokens (
    id          TEXT CONSTRAINT join_tokens_pkey PRIMARY KEY,
    token_hash  TEXT NOT NULL CONSTRAINT join_tokens_token_hash_key UNIQUE,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_by     TEXT
);

CREATE TABLE relays (
    id                  TEXT PRIMARY KEY,
    machine_token_hash  TEXT NOT NULL,
    owner               TEXT NOT NULL,
    created_at          BIGINT NOT NULL
);

CREATE TABLE relay_tokens (
    id          TEXT CONSTRAINT relay_tokens_pkey PRIMARY KEY,
    relay_id    TEXT NOT NULL REFERENCES relays (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    CONSTRAINT relay_tokens_hash_key UNIQUE (relay_id, token_hash)
);
"""

#: every schema version's script, oldest first; the schema version is ``len(MIGRATIONS)``
MIGRATIONS: tuple[str, ...] = (V1,)

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS valetkey_schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_by  TEXT NOT NULL
)
"""


def lock_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory lock key for ``purpose`` in ``schema``."""
    digest = hashlib.sha256(f"valetkey-store-postgres:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


async def schema_version(conn: asyncpg.Connection) -> int:
    """The highest applied version (0 for a new database)."""
    exists = await conn.fetchval("SELECT to_regclass('valetkey_schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    value = await conn.fetchval("SELECT coalesce(max(version), 0) FROM valetkey_schema_migrations")
    return int(value)


async def apply_migrations(
    conn: asyncpg.Connection, schema: str, migrations: Sequence[str] = MIGRATIONS
) -> int:
    """Apply pending migrations under the schema's advisory lock; return the version.

    ``PluginError`` if the database was written by a newer schema than ``migrations`` knows.
    """
    key = lock_key("migrate", schema)
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        if schema:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        await conn.execute(_BOOKKEEPING)
        current = await schema_version(conn)
        if current > len(migrations):
            raise PluginError(
                f"the database schema is version {current}, newer than this "
                f"valetkey-store-postgres knows ({len(migrations)}): upgrade the plugin"
            )
        who = f"{socket.gethostname()}:{os.getpid()}"
        for version in range(current, len(migrations)):
            async with conn.transaction():
                await conn.execute(migrations[version])
                await conn.execute(
                    "INSERT INTO valetkey_schema_migrations (version, applied_by) VALUES ($1, $2)",
                    version + 1,
                    who,
                )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return len(migrations)
