"""``valetkey store migrate --to postgres`` (issue 8): a populated SQLite store — every record
type — is copied into a real PostgreSQL server (tests/fixtures/postgres.py) with its sealed bytes
as they are, verified by counts and a checksum, safely re-run, refused (changing nothing) when
the target has diverged, and afterwards every connection vends the same secret from
PostgreSQL. The DSN comes from plugins.toml by ``$env`` reference and never reaches the output."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import timedelta

import pytest
from postgres import postgres  # tests/fixtures (on pythonpath)

from valetkey.kernel import load
from valetkey_broker.broker import Broker
from valetkey_hookspecs import (
    ApiToken,
    BoxSession,
    JoinToken,
    ProxyRun,
    RelayAccessToken,
    RelayRecord,
    Sealed,
    Secret,
    Spoke,
    TransientRecord,
    utcnow,
)

pytestmark = pytest.mark.slow
__all__ = ["postgres"]


def _config(tmp_path, select: str | None = None) -> str:
    path = tmp_path / f"plugins-{select or 'default'}.toml"
    chosen = f'[select]\nstore = "{select}"\n' if select else ""
    path.write_text(f"""{chosen}
[plugin.store-postgres]
dsn = {{ "$env" = "VALETKEY_PG_DSN" }}
""")
    return str(path)


async def _populate() -> dict[str, str]:
    """Connections with API keys and OAuth tokens, plus one record of every other kind."""
    kernel = load()
    async with kernel:
        broker = Broker(kernel)
        vended = {}
        for n in range(12):
            conn = await broker.create_connection("ann" if n % 2 else "bob", "openai")
            if n % 3 == 0:
                secret = Secret(api_key=f"sk-test-key-{n:04d}-abcdefgh")
            else:
                secret = Secret(
                    access_token=f"at-{n:04d}-abcdefghijkl",
                    refresh_token=f"rt-{n:04d}-abcdefghijkl",
                    expires_at=utcnow() + timedelta(days=1),
                )
            await broker.store_secret(conn.owner, conn.id, secret)
            vended[conn.id] = (await broker.vend(conn.owner, conn.id)).token or ""
        store = kernel.store
        now = utcnow()
        await store.api_tokens.create(ApiToken(id="t1", owner="ann", token_hash="h" * 64))
        await store.runs.put(ProxyRun(id="r1", owner="ann", grants=("openai",)))
        await store.boxes.put(
            BoxSession(box_id="b1", token_hash="bh", image="busybox", runtime="docker")
        )
        await store.transient.put(
            TransientRecord(
                kind="oauth-state",
                key="k1",
                expires_at=now + timedelta(hours=1),
                sealed=Sealed(b"\x00sealed-verifier", b"\x01wk", "kek-x"),
            )
        )
        await store.spokes.put(Spoke(id="s1", name="rack-1", credential_hash="sh"))
        await store.spokes.add_join_token(
            JoinToken(id="j1", token_hash="jh", expires_at=now + timedelta(hours=1))
        )
        await store.relays.put(RelayRecord(id="relay-1", machine_token_hash="mh", owner="ann"))
        await store.relays.add_access_token(
            RelayAccessToken(id="a1", relay_id="relay-1", token_hash="ah", name="laptop")
        )
        return vended


async def _vend_all(ids) -> dict[str, str]:
    kernel = load()
    async with kernel:
        broker = Broker(kernel)
        out = {}
        for cid in ids:
            conn = await broker.store.connections.get(cid)
            out[cid] = (await broker.vend(conn.owner, cid)).token or ""
        return out


def _sqlite_sealed(home) -> dict[str, tuple[bytes, bytes, str]]:
    with sqlite3.connect(home / "valetkey.db") as raw:
        rows = raw.execute("SELECT id, ciphertext, wrapped_key, key_id FROM credentials")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_migrate_copies_every_record_verified_and_vends_the_same(
    postgres, isolated, tmp_path, monkeypatch, run_cli
):
    dsn = postgres.create_database("migrate")
    monkeypatch.setenv("VALETKEY_PG_DSN", dsn)
    monkeypatch.setenv("VALETKEY_CONFIG", _config(tmp_path))
    before = asyncio.run(_populate())
    sealed = _sqlite_sealed(isolated)

    first = run_cli("store", "migrate", "--to", "postgres", "--json", check_rc=0)
    report = json.loads(first.stdout)
    tables = report["tables"]
    assert report["verified"] is True
    assert tables["connections"] == {
        "rows": 12,
        "copied": 12,
        "sha256": tables["connections"]["sha256"],
    }
    assert tables["credentials"]["copied"] == 12
    assert tables["audit"]["rows"] >= 24  # connect + vend events, chained
    for table in (
        "api_tokens",
        "proxy_runs",
        "box_sessions",
        "transient",
        "spokes",
        "join_tokens",
        "relays",
        "relay_tokens",
    ):
        assert (tables[table]["rows"], tables[table]["copied"]) == (1, 1), table
    for secret in before.values():
        assert secret not in first.stdout and secret not in first.stderr
    assert postgres.password not in first.stdout + first.stderr

    # safe to re-run: nothing copied, the same checksum verified again
    again = json.loads(run_cli("store", "migrate", "--to", "postgres", "--json", check_rc=0).stdout)
    assert {t: v["copied"] for t, v in again["tables"].items()} == dict.fromkeys(tables, 0)
    assert again["checksum"] == report["checksum"]
    people = run_cli("store", "migrate", "--to", "postgres", check_rc=0)
    assert "verified" in people.stderr and "credentials" in people.stdout

    # sealed bytes as they were in SQLite, byte for byte
    name = dsn.rsplit("/", 1)[1]
    copied = postgres.psql(
        "SELECT id, encode(ciphertext, 'hex'), encode(wrapped_key, 'hex'), key_id "
        "FROM credentials ORDER BY id",
        name,
    )
    got = {
        line.split("|")[0]: (
            bytes.fromhex(line.split("|")[1]),
            bytes.fromhex(line.split("|")[2]),
            line.split("|")[3],
        )
        for line in copied.splitlines()
    }
    assert got == sealed
    for secret in before.values():
        assert secret not in copied

    # switch every server over: the same secrets, now from PostgreSQL
    monkeypatch.setenv("VALETKEY_CONFIG", _config(tmp_path, select="postgres"))
    assert asyncio.run(_vend_all(list(before))) == before
    shown = run_cli("config", "show", check_rc=0)
    assert postgres.password not in shown.stdout + shown.stderr


def test_migrate_refuses_a_diverged_target_and_changes_nothing(
    postgres, isolated, tmp_path, monkeypatch, run_cli
):
    dsn = postgres.create_database("diverged")
    monkeypatch.setenv("VALETKEY_PG_DSN", dsn)
    monkeypatch.setenv("VALETKEY_CONFIG", _config(tmp_path))
    asyncio.run(_populate())
    run_cli("store", "migrate", "--to", "postgres", check_rc=0)
    name = dsn.rsplit("/", 1)[1]
    postgres.psql("UPDATE connections SET label = 'changed in postgres' WHERE owner = 'ann'", name)
    postgres.psql("DELETE FROM relay_tokens", name)
    failed = run_cli("store", "migrate", "--to", "postgres")
    assert failed.returncode != 0
    assert "connections" in failed.stderr and "nothing was copied" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert postgres.psql("SELECT count(*) FROM relay_tokens", name) == "0"  # rolled back


def test_migrate_errors_are_one_clear_line_without_the_password(
    postgres, tmp_path, monkeypatch, run_cli
):
    monkeypatch.setenv("VALETKEY_PG_DSN", postgres.dsn.replace(postgres.password, "N0t-the-pw9"))
    monkeypatch.setenv("VALETKEY_CONFIG", _config(tmp_path))
    asyncio.run(_populate())
    wrong = run_cli("store", "migrate", "--to", "postgres")
    assert wrong.returncode != 0
    assert "cannot connect the postgres store" in wrong.stderr
    assert "N0t-the-pw9" not in wrong.stderr and "Traceback" not in wrong.stderr
    unknown = run_cli("store", "migrate", "--to", "mongo")
    assert unknown.returncode != 0 and "no such store" in unknown.stderr
    monkeypatch.delenv("VALETKEY_PG_DSN")
    unset = run_cli("store", "migrate", "--to", "postgres")
    assert unset.returncode != 0 and "VALETKEY_PG_DSN" in unset.stderr
