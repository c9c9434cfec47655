"""``valetkey relay token create | list | revoke`` and ``relay host``'s bad input, through the
real CLI in subprocesses on the same SQLite store the host uses."""

from __future__ import annotations

import json
import os
import sqlite3

import anyio
import pytest

from valetkey_hookspecs.types import RelayRecord
from valetkey_relay.protocol import token_hash

from .conftest import make_kernel, run_valetkey


def cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "VALETKEY_CONFIG"}
    return run_valetkey(["relay", *args], env, cwd)


@pytest.fixture
def relay_id(isolated):
    async def create():
        kernel = make_kernel(isolated / "home")
        async with kernel:
            await kernel.store.relays.put(RelayRecord(id="rly_cli", machine_token_hash="0" * 64))

    anyio.run(create)
    return "rly_cli"


def test_create_prints_the_token_once_and_stores_its_hash(isolated, relay_id):
    made = cli("token", "create", relay_id, "--name", "claude", cwd=isolated)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("vkr_") and len(token) == 47
    assert made.stderr.startswith("access token rat_") and "(shown once)" in made.stderr
    db = sqlite3.connect(isolated / "home" / "valetkey.db")
    assert db.execute("SELECT token_hash, name FROM relay_tokens").fetchall() == [
        (token_hash(token), "claude")
    ]
    blob = b"".join(p.read_bytes() for p in (isolated / "home").rglob("*") if p.is_file())
    assert token.encode() not in blob
    listed = cli("token", "list", relay_id, "--json", cwd=isolated)
    rows = json.loads(listed.stdout)
    assert [(r["relay_id"], r["name"]) for r in rows] == [(relay_id, "claude")]
    assert token not in listed.stdout
    table = cli("token", "list", relay_id, cwd=isolated)
    assert "claude" in table.stdout and token not in table.stdout
    as_json = json.loads(cli("token", "create", relay_id, "--json", cwd=isolated).stdout)
    assert as_json["token"].startswith("vkr_") and as_json["id"].startswith("rat_")


def test_revoke_removes_the_token(isolated, relay_id):
    made = json.loads(cli("token", "create", relay_id, "--json", cwd=isolated).stdout)
    revoked = cli("token", "revoke", made["id"], cwd=isolated)
    assert (revoked.returncode, revoked.stdout) == (0, f"revoked {made['id']}\n")
    assert json.loads(cli("token", "list", relay_id, "--json", cwd=isolated).stdout) == []
    again = cli("token", "revoke", made["id"], cwd=isolated)
    assert again.returncode == 1
    assert again.stderr == (f"valetkey: error: relay access token {made['id']!r} not found\n")


def test_tokens_for_an_unknown_relay_are_refused(isolated, relay_id):
    for args in (("token", "create", "rly_nope"), ("token", "list", "rly_nope")):
        proc = cli(*args, cwd=isolated)
        assert proc.returncode == 1
        assert proc.stderr == "valetkey: error: relay 'rly_nope' not found\n"
        assert proc.stdout == ""
    db = sqlite3.connect(isolated / "home" / "valetkey.db")
    assert db.execute("SELECT COUNT(*) FROM relay_tokens").fetchone() == (0,)


def test_host_rejects_bad_options(isolated):
    proc = cli("host", "--port", "70000", cwd=isolated)
    assert (proc.returncode, proc.stderr) == (
        2,
        "valetkey: error: --port 70000 is not a TCP port (0-65535)\n",
    )
    proc = cli("host", "--public-url", "relay.example", cwd=isolated)
    assert proc.returncode == 2
    assert "--public-url 'relay.example': give an http(s) URL" in proc.stderr
