"""The broker's commands through the real CLI in subprocesses: keys from stdin (never argv),
owner scoping, the token printed alone, one-line errors, the audit chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def cli(tmp_path):
    env = {
        **os.environ,
        "VALETKEY_HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "VALETKEY_OWNER": "ann",
    }
    env.pop("VALETKEY_CONFIG", None)

    def run(*args, stdin="", owner=None):
        run_env = dict(env)
        if owner:
            run_env["VALETKEY_OWNER"] = owner
        return subprocess.run(
            [sys.executable, "-m", "valetkey", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=run_env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )

    return run


def add_key(cli, key="sk-test-abcdef123456", owner=None):
    proc = cli("key", "add", "openai", "--json", stdin=key + "\n", owner=owner)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["id"]


def test_key_from_stdin_then_token_prints_only_the_token(cli, tmp_path):
    cid = add_key(cli)
    token = cli("token", cid)
    assert (token.returncode, token.stdout) == (0, "sk-test-abcdef123456\n")
    listed = json.loads(cli("connections", "list", "--json").stdout)
    assert [(c["id"], c["connector"], c["status"]) for c in listed] == [(cid, "openai", "ACTIVE")]
    shown = cli("connections", "show", cid)
    assert "sk-test-abcdef123456" not in shown.stdout
    assert "credential.kind: api_key" in shown.stdout
    blob = b"".join(p.read_bytes() for p in (tmp_path / "home").rglob("*") if p.is_file())
    assert b"sk-test-abcdef123456" not in blob


def test_no_key_on_stdin_is_one_clear_line_and_creates_nothing(cli):
    proc = cli("key", "add", "openai", stdin="")
    assert (proc.returncode, proc.stderr) == (
        2,
        "valetkey: error: no API key given: pipe it on stdin or type it at the prompt\n",
    )
    assert json.loads(cli("connections", "list", "--json").stdout) == []


def test_wrong_kind_of_connector_points_at_the_right_command(cli):
    proc = cli("key", "add", "github", stdin="x" * 20)
    assert proc.stderr == "valetkey: error: github uses OAuth: run 'valetkey connect github'\n"
    proc = cli("connect", "openai")
    assert proc.stderr == (
        "valetkey: error: openai uses an API key, not OAuth: run 'valetkey key add openai'\n"
    )
    proc = cli("key", "add", "nope", stdin="x" * 20)
    assert proc.returncode == 1 and proc.stderr.startswith(
        "valetkey: error: unknown connector 'nope'"
    )


def test_another_owner_gets_not_found_for_every_command(cli):
    cid = add_key(cli)
    missing = cli("token", "conn_doesnotexist", owner="bob").stderr
    for args in (
        ("token", cid),
        ("connections", "show", cid),
        ("connections", "revoke", cid),
        ("connections", "delete", cid),
        ("refresh", cid),
    ):
        proc = cli(*args, owner="bob")
        assert proc.returncode == 1, args
        assert proc.stderr == missing.replace("conn_doesnotexist", cid), args
    assert cli("token", cid).stdout == "sk-test-abcdef123456\n"


def test_revoke_then_delete(cli):
    cid = add_key(cli)
    assert cli("connections", "revoke", cid).stdout == f"revoked {cid}\n"
    proc = cli("token", cid)
    assert (proc.returncode, proc.stderr) == (1, f"valetkey: error: connection {cid} is revoked\n")
    assert cli("connections", "delete", cid).returncode == 0
    assert json.loads(cli("connections", "list", "--json").stdout) == []


def test_rotating_a_key_replaces_it_in_place(cli):
    cid = add_key(cli)
    proc = cli("key", "add", "openai", "--connection", cid, stdin="sk-test-rotated9876\n")
    assert proc.returncode == 0, proc.stderr
    assert cli("token", cid).stdout == "sk-test-rotated9876\n"


def test_audit_records_and_verifies(cli):
    cid = add_key(cli)
    cli("token", cid)
    events = json.loads(cli("audit", "--json").stdout)
    assert [e["action"] for e in events] == ["connection.create", "credential.store", "vend"]
    assert all(e["owner"] == "ann" for e in events)
    assert "sk-test" not in json.dumps(events)
    verified = cli("audit", "--verify")
    assert (verified.returncode, verified.stdout) == (0, "audit chain verified: 3 events\n")


def test_api_tokens_are_shown_once_and_stored_hashed(cli, tmp_path):
    made = json.loads(cli("tokens", "create", "--name", "ci", "--json").stdout)
    assert made["token"].startswith("vk_") and made["owner"] == "ann"
    listed = json.loads(cli("tokens", "list", "--json").stdout)
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
    blob = b"".join(p.read_bytes() for p in (tmp_path / "home").rglob("*") if p.is_file())
    assert made["token"].encode() not in blob
    assert cli("tokens", "revoke", made["id"]).returncode == 0
    assert json.loads(cli("tokens", "list", "--json").stdout) == []


def test_audit_verify_names_the_first_tampered_event(cli, tmp_path):
    import sqlite3

    cid = add_key(cli)
    cli("token", cid)
    db = sqlite3.connect(tmp_path / "home" / "valetkey.db")
    with db:  # someone rewrites history: the vend was by another actor
        db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3")
    db.close()
    proc = cli("audit", "--verify", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {"ok": False, "events": 3, "first_bad_seq": 3}
    plain = cli("audit", "--verify")
    assert plain.stderr == "valetkey: error: audit chain broken at event 3\n"
