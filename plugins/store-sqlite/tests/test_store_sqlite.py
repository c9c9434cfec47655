"""valetkey-store-sqlite: the Store contract, plus what only a SQLite file has (modes, WAL,
migrations, several connections on one file) and the plugin's registration."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from dataclasses import fields
from datetime import datetime
from pathlib import Path

import anyio
import pluggy
import pytest

import valetkey_hookspecs.hookspecs
import valetkey_store_sqlite
from valetkey_hookspecs import (
    ConfigError,
    Connection,
    Credential,
    CredentialKind,
    InvalidInput,
    PluginContext,
    PluginError,
    Sealed,
)
from valetkey_hookspecs.audit import verify_chain
from valetkey_hookspecs.testing import PluginContract, StoreContract
from valetkey_store_sqlite.config import SqliteConfig
from valetkey_store_sqlite.migrations import MIGRATIONS, apply_migrations
from valetkey_store_sqlite.store import SqliteStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestSqliteStore(StoreContract):
    supports_tamper = True

    @pytest.fixture
    async def store(self, tmp_path):
        store = SqliteStore(tmp_path / "state" / "valetkey.db")
        await store.open()
        yield store
        await store.close()

    async def tamper_audit(self, store, seq):
        with sqlite3.connect(store.path) as raw:
            raw.execute("UPDATE audit SET action = 'nothing to see' WHERE seq = ?", (seq,))


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "valetkey.db"


@pytest.fixture
async def store(db_path: Path):
    store = SqliteStore(db_path)
    await store.open()
    yield store
    await store.close()


def _conn(cid: str = "c1") -> Connection:
    return Connection(id=cid, owner="alice", connector="github")


# --------------------------------------------------------------------------- files


@pytest.mark.anyio
async def test_database_is_0600_in_a_0700_folder(store: SqliteStore, db_path: Path) -> None:
    await store.connections.create(_conn())  # a write, so the -wal and -shm files exist
    assert _mode(db_path.parent) == 0o700
    assert _mode(db_path) == 0o600
    for suffix in ("-wal", "-shm"):
        sidecar = db_path.with_name(db_path.name + suffix)
        assert sidecar.exists()
        assert _mode(sidecar) == 0o600


@pytest.mark.anyio
async def test_existing_lax_database_file_is_tightened(db_path: Path) -> None:
    db_path.parent.mkdir(mode=0o700)
    db_path.touch(mode=0o644)
    db_path.chmod(0o644)
    store = SqliteStore(db_path)
    await store.open()
    await store.close()
    assert _mode(db_path) == 0o600


@pytest.mark.anyio
async def test_pragmas_wal_normal_foreign_keys_busy_timeout(db_path: Path) -> None:
    store = SqliteStore(db_path, busy_timeout_ms=1234)
    await store.open()
    try:
        assert await store.pragma("journal_mode") == "wal"
        assert await store.pragma("synchronous") == 1  # NORMAL
        assert await store.pragma("foreign_keys") == 1
        assert await store.pragma("busy_timeout") == 1234
    finally:
        await store.close()
    with sqlite3.connect(db_path) as raw:  # WAL is a property of the file
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.anyio
async def test_only_known_pragmas_are_readable(store: SqliteStore) -> None:
    with pytest.raises(PluginError):
        await store.pragma("writable_schema = 1")


# --------------------------------------------------------------------------- migrations


@pytest.mark.anyio
async def test_migrations_apply_once_and_reopen_keeps_data(db_path: Path) -> None:
    first = SqliteStore(db_path)
    await first.open()
    await first.connections.create(_conn())
    await first.close()
    again = SqliteStore(db_path)
    await again.open()
    try:
        assert await again.schema_version() == len(MIGRATIONS)
        assert (await again.connections.get("c1")).owner == "alice"
    finally:
        await again.close()


def test_apply_migrations_runs_only_pending_scripts() -> None:
    raw = sqlite3.connect(":memory:", isolation_level=None)
    v1 = "CREATE TABLE one (x INTEGER);"
    v2 = "CREATE TABLE two (y INTEGER);\nINSERT INTO two VALUES (2);"
    assert apply_migrations(raw, [v1]) == 1
    assert apply_migrations(raw, [v1, v2]) == 2  # v1 again would fail: the table exists
    assert apply_migrations(raw, [v1, v2]) == 2
    assert raw.execute("SELECT y FROM two").fetchall() == [(2,)]


def test_failing_migration_changes_nothing() -> None:
    raw = sqlite3.connect(":memory:", isolation_level=None)
    apply_migrations(raw, ["CREATE TABLE one (x INTEGER);"])
    broken = "CREATE TABLE two (y INTEGER);\nINSERT INTO nowhere VALUES (1);"
    with pytest.raises(sqlite3.OperationalError):
        apply_migrations(raw, ["CREATE TABLE one (x INTEGER);", broken])
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"one"}


@pytest.mark.anyio
async def test_newer_schema_is_refused_with_a_clear_error(db_path: Path) -> None:
    db_path.parent.mkdir(mode=0o700)
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    store = SqliteStore(db_path)
    with pytest.raises(PluginError, match="newer"):
        await store.open()
    await store.close()


# --------------------------------------------------------------------------- two connections


@pytest.mark.anyio
async def test_two_stores_on_one_file_share_leases(db_path: Path) -> None:
    one, two = SqliteStore(db_path), SqliteStore(db_path)
    await one.open()
    await two.open()
    try:
        assert await one.leases.acquire("refresh:c1", "process-1", 0.05)
        assert not await two.leases.acquire("refresh:c1", "process-2", 5)
        assert await two.leases.holder("refresh:c1") == "process-1"
        await anyio.sleep(0.1)
        assert await two.leases.acquire("refresh:c1", "process-2", 5)
        assert not await one.leases.acquire("refresh:c1", "process-1", 5)
    finally:
        await one.close()
        await two.close()


@pytest.mark.anyio
async def test_two_stores_appending_at_once_keep_one_chain(db_path: Path) -> None:
    one, two = SqliteStore(db_path), SqliteStore(db_path)
    await one.open()
    await two.open()
    try:

        async def append(store: SqliteStore, name: str) -> None:
            for n in range(25):
                await store.audit.append("vend", actor=name, detail={"n": n})

        async with anyio.create_task_group() as tg:
            for n in range(2):
                tg.start_soon(append, one, f"one-{n}")
                tg.start_soon(append, two, f"two-{n}")
        events = await one.audit.list()
        assert [e.seq for e in events] == list(range(1, 101))
        assert verify_chain(events) is None
        assert {e.actor.split("-")[0] for e in events} == {"one", "two"}
    finally:
        await one.close()
        await two.close()


# --------------------------------------------------------------------------- what is stored


@pytest.mark.anyio
async def test_sealed_bytes_are_stored_as_is(store: SqliteStore, db_path: Path) -> None:
    sealed = Sealed(ciphertext=b"\x00\x9fopaque\xff", wrapped_key=b"\x01wk\x00", key_id="kek-1")
    await store.connections.create(_conn())
    await store.credentials.put(
        Credential(id="cr1", connection_id="c1", kind=CredentialKind.API_KEY, sealed=sealed)
    )
    with sqlite3.connect(db_path) as raw:
        row = raw.execute(
            "SELECT ciphertext, wrapped_key, key_id FROM credentials WHERE id = 'cr1'"
        ).fetchone()
    assert row == (sealed.ciphertext, sealed.wrapped_key, sealed.key_id)


@pytest.mark.anyio
async def test_times_are_stored_as_utc_microseconds(store: SqliteStore, db_path: Path) -> None:
    at = datetime.fromisoformat("2031-03-04T07:06:07.000001+02:00")
    await store.connections.create(
        Connection(id="c1", owner="a", connector="g", created_at=at, updated_at=at)
    )
    with sqlite3.connect(db_path) as raw:
        (value,) = raw.execute("SELECT created_at FROM connections").fetchone()
    assert value == int(at.timestamp()) * 1_000_000 + 1


@pytest.mark.anyio
async def test_naive_datetime_is_invalid_input(store: SqliteStore) -> None:
    naive = datetime(2031, 1, 1)
    with pytest.raises(InvalidInput, match="timezone-aware"):
        await store.connections.create(
            Connection(id="c1", owner="a", connector="g", created_at=naive)
        )
    assert await store.connections.count() == 0


@pytest.mark.anyio
async def test_non_json_metadata_is_invalid_input(store: SqliteStore) -> None:
    with pytest.raises(InvalidInput, match="c1"):
        await store.connections.create(
            Connection(id="c1", owner="a", connector="g", metadata={"x": object()})
        )
    assert await store.connections.count() == 0


@pytest.mark.anyio
async def test_unopened_store_says_so(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(PluginError, match="not open"):
        await store.connections.count()
    assert not db_path.exists()


@pytest.mark.anyio
async def test_store_reopens_after_close(store: SqliteStore) -> None:
    await store.connections.create(_conn())
    await store.close()
    await store.open()
    assert await store.connections.count() == 1


@pytest.mark.anyio
async def test_cancelled_caller_leaves_no_open_transaction(store: SqliteStore) -> None:
    with anyio.move_on_after(0):
        await store.audit.append("vend", actor="a")
    await store.audit.append("vend", actor="b")
    assert verify_chain(await store.audit.list()) is None


# --------------------------------------------------------------------------- the plugin


class _Kernel:
    def __init__(self, home: Path) -> None:
        self.home = home


def _registered(tmp_path: Path, config: SqliteConfig | None):
    registered = []
    valetkey_store_sqlite.valetkey_register_stores(
        lambda name, factory, *, default=False: registered.append((name, factory, default))
    )
    ((name, factory, default),) = registered
    ctx = PluginContext(plugin="store-sqlite", config=config, kernel=_Kernel(tmp_path))
    return name, default, factory(ctx)


def test_plugin_registers_sqlite_as_the_default(tmp_path: Path) -> None:
    name, default, store = _registered(tmp_path, None)
    assert (name, default) == ("sqlite", True)
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "valetkey.db"
    assert not store.path.exists()  # built, not opened: the kernel opens it


def test_plugin_config_path_is_relative_to_home(tmp_path: Path) -> None:
    _, _, store = _registered(tmp_path, SqliteConfig(path="db/other.db"))
    assert store.path == tmp_path / "db" / "other.db"
    _, _, store = _registered(tmp_path, SqliteConfig(path=str(tmp_path / "abs.db")))
    assert store.path == tmp_path / "abs.db"


def test_plugin_rejects_a_negative_busy_timeout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="busy_timeout_ms"):
        _registered(tmp_path, SqliteConfig(busy_timeout_ms=-1))


def test_plugin_config_schema_is_a_small_dataclass() -> None:
    schema = valetkey_store_sqlite.valetkey_config_schema()
    assert schema is SqliteConfig
    assert [f.name for f in fields(schema)] == ["path", "busy_timeout_ms"]
    assert SqliteConfig() == SqliteConfig(path=None, busy_timeout_ms=5000)


def test_hookimpls_match_the_hookspecs() -> None:
    pm = pluggy.PluginManager("valetkey")
    pm.add_hookspecs(valetkey_hookspecs.hookspecs)
    pm.register(valetkey_store_sqlite, name="store-sqlite")
    pm.check_pending()
    names = {impl.function.__name__ for impl in pm.hook.valetkey_register_stores.get_hookimpls()}
    assert names == {"valetkey_register_stores"}


def test_importing_the_plugin_is_light() -> None:
    code = (
        "import sys, valetkey_store_sqlite; "
        "heavy = [m for m in ('aiosqlite', 'sqlite3', 'valetkey_store_sqlite.store') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_sqlite_is_new_enough_for_returning_and_upsert() -> None:
    assert sqlite3.sqlite_version_info >= (3, 35, 0)


@pytest.mark.anyio
async def test_lease_needs_a_positive_ttl(store: SqliteStore) -> None:
    with pytest.raises(InvalidInput, match="ttl"):
        await store.leases.acquire("l", "worker-a", 0)
    assert await store.leases.holder("l") is None


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self):
        return "store-sqlite"


@pytest.mark.anyio
async def test_an_in_place_append_that_finds_the_lock_taken_waits_on_the_worker(
    store: SqliteStore, db_path: Path
) -> None:
    """The audit append runs on the event loop's thread only when the write lock is free; held
    by another process, it goes through the worker, which waits (busy timeout) and succeeds."""
    import threading

    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    threading.Timer(0.2, lambda: other.execute("COMMIT")).start()
    event = await store.audit.append("vend", actor="api", owner="ann", connection_id="c1")
    other.close()
    assert event.seq == 1
    assert verify_chain(await store.audit.list()) is None


@pytest.mark.anyio
async def test_in_place_commits_are_checkpointed_by_the_worker(
    store: SqliteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from valetkey_store_sqlite import db as db_module

    monkeypatch.setattr(db_module, "CHECKPOINT_EVERY", 5)
    database = store._db
    runs = []
    real = database.checkpoint_passive

    async def counted() -> None:
        runs.append(1)
        await real()

    monkeypatch.setattr(database, "checkpoint_passive", counted)
    for _ in range(12):
        await store.audit.append("vend", actor="api")
    assert len(runs) == 2  # after the 5th and the 10th in-place commit
    assert len(await store.audit.list()) == 12
