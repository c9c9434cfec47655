"""valetkey-store-postgres against a real PostgreSQL server (tests/fixtures/postgres.py): the
Store contract, the claim that shares refresh-ahead work, migrations under an advisory lock (two
processes at once), DSN references and redaction, and the plugin's registration."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import fields

import anyio
import pytest
from postgres import postgres  # tests/fixtures (on pythonpath)

import valetkey_store_postgres
from valetkey_hookspecs import (
    ConfigError,
    Connection,
    Credential,
    CredentialKind,
    PluginContext,
    PluginError,
    Sealed,
)
from valetkey_hookspecs.testing import PluginContract, StoreContract
from valetkey_hookspecs.types import utcnow
from valetkey_store_postgres.config import PostgresConfig, dsn_password, redact_dsn
from valetkey_store_postgres.migrations import MIGRATIONS
from valetkey_store_postgres.store import PostgresStore

__all__ = ["postgres"]


@pytest.fixture(scope="session")
def database(postgres) -> str:
    """One database for this module; every test gets its own schema in it."""
    return postgres.create_database("storetest")


def _config(dsn: str, schema: str | None = None, **changes) -> PostgresConfig:
    values = {
        "dsn": dsn,
        "schema": schema or f"t_{uuid.uuid4().hex[:12]}",
        "pool_min_size": 1,
        "pool_max_size": 4,
    }
    values.update(changes)
    return PostgresConfig(**values)


class TestPostgresStore(StoreContract):
    supports_tamper = True

    @pytest.fixture
    async def store(self, database):
        store = PostgresStore(_config(database))
        await store.open()
        yield store
        await store.close()

    async def tamper_audit(self, store, seq):
        await store.db.execute("UPDATE audit SET action = 'nothing to see' WHERE seq = $1", seq)


@pytest.fixture
async def store(database):
    store = PostgresStore(_config(database))
    await store.open()
    yield store
    await store.close()


def _conn(cid: str = "c1", status: str = "ACTIVE") -> Connection:
    return Connection(id=cid, owner="alice", connector="github", status=status)


def _cred(cid: str, expires_in: float) -> Credential:
    from datetime import timedelta

    return Credential(
        id=f"cr-{cid}",
        connection_id=cid,
        kind=CredentialKind.OAUTH2,
        sealed=Sealed(b"\x00ct-" + cid.encode(), b"\x01wk", "kek-1"),
        expires_at=utcnow() + timedelta(seconds=expires_in),
    )


# --------------------------------------------------------------------------- claims


@pytest.mark.anyio
async def test_concurrent_claimers_on_separate_pools_get_disjoint_sets(database) -> None:
    from datetime import timedelta

    schema = f"t_{uuid.uuid4().hex[:12]}"
    stores = [PostgresStore(_config(database, schema)) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        for n in range(90):
            await stores[0].connections.create(_conn(f"c{n:03d}"))
            await stores[0].credentials.put(_cred(f"c{n:03d}", 10))
        before = utcnow() + timedelta(minutes=5)
        got: dict[str, list[str]] = {}

        async def claim(index: int) -> None:
            mine = got.setdefault(f"s{index}", [])
            while batch := await stores[index].credentials.claim_due(before, 7, f"s{index}", 30):
                mine.extend(c.connection_id for c in batch)
                # what a server does with its claim: refresh (here: push expiry) and release
                for c in batch:
                    await stores[index].credentials.replace(
                        c.connection_id, c.sealed, utcnow() + timedelta(hours=1)
                    )
                    await stores[index].leases.release(f"refresh:{c.connection_id}", f"s{index}")

        async with anyio.create_task_group() as tg:
            for index in range(3):
                tg.start_soon(claim, index)
        everything = [cid for ids in got.values() for cid in ids]
        assert sorted(everything) == [f"c{n:03d}" for n in range(90)]  # each exactly once
        assert all(got.values())  # the work was shared
    finally:
        for s in stores:
            await s.close()


# --------------------------------------------------------------------------- migrations


@pytest.mark.anyio
async def test_migrations_are_recorded_once_and_reopen_keeps_data(database) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    first = PostgresStore(_config(database, schema))
    await first.open()
    await first.connections.create(_conn())
    await first.close()
    again = PostgresStore(_config(database, schema))
    await again.open()
    try:
        assert await again.schema_version() == len(MIGRATIONS)
        assert (await again.connections.get("c1")).owner == "alice"
        rows = await again.db.fetch("SELECT version FROM valetkey_schema_migrations")
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await again.close()


_RACE = """
import asyncio, sys, time
from valetkey_store_postgres.config import PostgresConfig
from valetkey_store_postgres.migrations import MIGRATIONS
from valetkey_store_postgres.store import PostgresStore

async def main():
    slow = MIGRATIONS[0] + "\\nSELECT pg_sleep(0.5);"
    start = float(sys.argv[3])
    while time.time() < start:
        await asyncio.sleep(0.005)
    store = PostgresStore(PostgresConfig(dsn=sys.argv[1], schema=sys.argv[2]), migrations=(slow,))
    await store.open()
    print(await store.schema_version())
    await store.close()

asyncio.run(main())
"""


def test_processes_starting_at_once_migrate_once(database) -> None:
    import os
    import time

    schema = f"t_{uuid.uuid4().hex[:12]}"
    start = str(time.time() + 1.5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, database, schema, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _out, err in results]
    assert [out.strip() for out, _err in results] == ["1", "1", "1"]

    async def applied() -> list[tuple[int, str]]:
        store = PostgresStore(_config(database, schema))
        await store.open()
        try:
            rows = await store.db.fetch(
                "SELECT version, applied_by FROM valetkey_schema_migrations"
            )
            return [(r[0], r[1]) for r in rows]
        finally:
            await store.close()

    rows = anyio.run(applied)
    assert len(rows) == 1 and rows[0][0] == 1  # one process applied it; two found it done


@pytest.mark.anyio
async def test_newer_schema_is_refused_with_a_clear_error(database) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(_config(database, schema))
    await store.open()
    await store.db.execute(
        "INSERT INTO valetkey_schema_migrations (version, applied_by) VALUES ($1, 'future')",
        len(MIGRATIONS) + 1,
    )
    await store.close()
    with pytest.raises(PluginError, match="newer"):
        await PostgresStore(_config(database, schema)).open()


@pytest.mark.anyio
async def test_schema_keeps_tables_out_of_public(database, postgres) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(_config(database, schema))
    await store.open()
    await store.close()
    name = database.rsplit("/", 1)[1]
    tables = postgres.psql(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'", name
    ).split()
    assert "credentials" in tables and "valetkey_schema_migrations" in tables
    public = postgres.psql(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", name
    )
    assert public == "0"


# --------------------------------------------------------------------------- what is stored


@pytest.mark.anyio
async def test_sealed_bytes_are_stored_as_is(store) -> None:
    sealed = Sealed(ciphertext=b"\x00\x9fopaque\xff", wrapped_key=b"\x01wk\x00", key_id="kek-1")
    await store.connections.create(_conn())
    await store.credentials.put(
        Credential(id="cr1", connection_id="c1", kind=CredentialKind.API_KEY, sealed=sealed)
    )
    row = await store.db.fetchrow(
        "SELECT ciphertext, wrapped_key, key_id FROM credentials WHERE id = 'cr1'"
    )
    assert (row[0], row[1], row[2]) == (sealed.ciphertext, sealed.wrapped_key, sealed.key_id)


@pytest.mark.anyio
async def test_unopened_store_says_so(database) -> None:
    store = PostgresStore(_config(database))
    with pytest.raises(PluginError, match="not open"):
        await store.connections.count()


@pytest.mark.anyio
async def test_store_reopens_after_close(store) -> None:
    await store.connections.create(_conn())
    await store.close()
    await store.open()
    assert await store.connections.count() == 1


@pytest.mark.anyio
async def test_cancelled_caller_leaves_the_chain_whole(store) -> None:
    from valetkey_hookspecs.audit import verify_chain

    with anyio.move_on_after(0):
        await store.audit.append("vend", actor="a")
    await store.audit.append("vend", actor="b")
    assert verify_chain(await store.audit.list()) is None


# --------------------------------------------------------------------------- DSN and secrets


def test_redact_dsn_masks_url_and_keyword_passwords() -> None:
    assert redact_dsn("postgresql://vk:s3cr3t-pass@db:5432/valetkey") == (
        "postgresql://vk:***@db:5432/valetkey"
    )
    assert redact_dsn("host=db user=vk password=s3cr3t-pass dbname=v") == (
        "host=db user=vk password=*** dbname=v"
    )
    assert "s3cr3t" not in redact_dsn("postgresql://vk@db/v?password=s3cr3t-pass&sslmode=require")
    assert dsn_password("postgresql://vk:s3cr3t-pass@db/v") == "s3cr3t-pass"
    assert dsn_password("host=db password='s3cr3t pass'") == "s3cr3t pass"


@pytest.mark.anyio
async def test_a_wrong_password_fails_clearly_without_the_password(postgres) -> None:
    dsn = postgres.dsn.replace(postgres.password, "Wr0ng-pa55word")
    store = PostgresStore(PostgresConfig(dsn=dsn))
    with pytest.raises(PluginError) as caught:
        await store.open()
    text = str(caught.value)
    assert "cannot connect" in text and "***" in text
    assert "Wr0ng-pa55word" not in text and postgres.password not in text
    assert "Wr0ng-pa55word" not in repr(store)


@pytest.mark.anyio
async def test_an_unreachable_server_fails_clearly(postgres) -> None:
    dsn = "postgresql://vk:Secret-123456@127.0.0.1:1/nowhere"
    store = PostgresStore(PostgresConfig(dsn=dsn, connect_timeout=2))
    with pytest.raises(PluginError, match="cannot connect") as caught:
        await store.open()
    assert "Secret-123456" not in str(caught.value)


def test_config_repr_hides_the_dsn() -> None:
    assert "hunter2-hunter2" not in repr(PostgresConfig(dsn="postgresql://u:hunter2-hunter2@h/d"))


# --------------------------------------------------------------------------- the plugin


class _Kernel:
    def __init__(self, home) -> None:
        self.home = home


def _registered(tmp_path, config):
    registered = []
    valetkey_store_postgres.valetkey_register_stores(
        lambda name, factory, *, default=False: registered.append((name, factory, default))
    )
    ((name, factory, default),) = registered
    ctx = PluginContext(plugin="store-postgres", config=config, kernel=_Kernel(tmp_path))
    return name, default, factory(ctx)


def test_plugin_registers_postgres_not_as_the_default(tmp_path) -> None:
    name, default, store = _registered(tmp_path, PostgresConfig(dsn="postgresql://h/d"))
    assert (name, default) == ("postgres", False)
    assert isinstance(store, PostgresStore)


def test_plugin_without_a_dsn_is_a_config_error_naming_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\[plugin.store-postgres\] dsn"):
        _registered(tmp_path, None)
    with pytest.raises(ConfigError, match="schema"):
        _registered(tmp_path, PostgresConfig(dsn="postgresql://h/d", schema="Bad Name"))


def test_plugin_config_schema() -> None:
    schema = valetkey_store_postgres.valetkey_config_schema()
    assert schema is PostgresConfig
    assert [f.name for f in fields(schema)][:2] == ["dsn", "schema"]


def test_importing_the_plugin_is_light() -> None:
    code = (
        "import sys, valetkey_store_postgres; "
        "heavy = [m for m in ('asyncpg', 'valetkey_store_postgres.store') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self):
        return "store-postgres"
