"""The vault end to end with the default plugins (store-sqlite, sealer-local, secrets-keyring in
its file fallback): nothing readable at rest, and KEK rotation that survives a kill -9 mid-way."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time

import anyio
import pytest

from valetkey.kernel import load
from valetkey_hookspecs import Connection, Credential, CredentialKind, Secret

N_RECORDS = 1500


async def populate(n: int) -> dict[str, Secret]:
    kernel = load()
    made: dict[str, Secret] = {}
    async with kernel:
        for i in range(n):
            conn = await kernel.store.connections.create(
                Connection(id=f"conn_{i:05d}", owner="ann", connector="github")
            )
            secret = Secret(
                access_token=f"gho_{secrets.token_hex(16)}",
                refresh_token=f"ghr_{secrets.token_hex(16)}",
            )
            cred_id = f"cred_{i:05d}"
            sealed = kernel.sealer.seal(secret.to_bytes(), cred_id.encode())
            credential = Credential(
                id=cred_id, connection_id=conn.id, kind=CredentialKind.OAUTH2, sealed=sealed
            )
            await kernel.store.credentials.put(credential)
            made[cred_id] = secret
    return made


async def open_all() -> tuple[dict[str, Secret], dict[str, int]]:
    kernel = load()  # a fresh process view: the ring comes from the secret store
    opened: dict[str, Secret] = {}
    async with kernel:
        counts = await kernel.store.credentials.key_ids()
        conns = await kernel.store.connections.list("ann", limit=N_RECORDS + 10)
        for conn in conns:
            cred = await kernel.store.credentials.get(conn.id)
            opened[cred.id] = Secret.from_bytes(kernel.sealer.open(cred.sealed, cred.id.encode()))
    return opened, counts


def test_nothing_secret_is_readable_at_rest(isolated):
    made = anyio.run(populate, 20)
    files = [p for p in isolated.rglob("*") if p.is_file()]
    assert any(p.name.startswith("valetkey.db") for p in files)
    blob = b"".join(p.read_bytes() for p in files)
    for secret in made.values():
        for value in secret.values():
            assert value.encode() not in blob
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    for folder in [isolated, *(p for p in isolated.rglob("*") if p.is_dir())]:
        assert folder.stat().st_mode & 0o777 == 0o700, folder


@pytest.mark.slow
def test_rotation_killed_midway_then_rerun_leaves_every_record_readable(isolated):
    made = anyio.run(populate, N_RECORDS)
    _, before = anyio.run(open_all)
    (old_key,) = before

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "valetkey",
            "vault",
            "rotate-kek",
            "--batch-size",
            "1",
            "--retire-grace",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    mixed = None
    deadline = time.monotonic() + 60
    db = sqlite3.connect(f"file:{isolated / 'valetkey.db'}?mode=ro", uri=True)
    while time.monotonic() < deadline and proc.poll() is None:
        # a cheap read-only look at the default store's table, so the kill lands mid-way
        counts = dict(db.execute("SELECT key_id, count(*) FROM credentials GROUP BY key_id"))
        if len(counts) == 2 and 0 < counts.get(old_key, 0) < N_RECORDS * 0.9:
            mixed = counts
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    db.close()
    proc.wait(10)
    assert mixed is not None, "the rotation finished before it could be interrupted"

    opened, counts = anyio.run(open_all)  # every record readable after the kill
    assert opened == made
    assert sum(counts.values()) == N_RECORDS and len(counts) == 2

    rerun = subprocess.run(
        [sys.executable, "-m", "valetkey", "vault", "rotate-kek", "--retire-grace", "0", "--json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["resumed"] is True
    assert summary["retired"] == [old_key]
    assert summary["rewrapped"] == counts[old_key]

    opened, counts = anyio.run(open_all)
    assert opened == made
    assert counts == {summary["current"]: N_RECORDS}


def test_rotation_skips_and_reports_a_record_it_cannot_open(isolated):
    made = anyio.run(populate, 5)

    async def plant() -> None:
        from valetkey_hookspecs import Sealed

        kernel = load()
        async with kernel:
            await kernel.store.connections.create(
                Connection(id="conn_alien", owner="ann", connector="github")
            )
            alien = Sealed(ciphertext=b"\x00" * 40, wrapped_key=b"\x00" * 60, key_id="0" * 16)
            await kernel.store.credentials.put(
                Credential(
                    id="cred_alien",
                    connection_id="conn_alien",
                    kind=CredentialKind.OAUTH2,
                    sealed=alien,
                )
            )

    anyio.run(plant)
    proc = subprocess.run(
        [sys.executable, "-m", "valetkey", "vault", "rotate-kek", "--retire-grace", "0", "--json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["unreadable"] == ["cred_alien"]
    assert summary["resumed"] is False
    assert summary["rewrapped"] == 5
    kernel_counts = anyio.run(open_all_but_alien)
    assert kernel_counts == {summary["current"]: 5, "0" * 16: 1}
    assert len(made) == 5


async def open_all_but_alien() -> dict[str, int]:
    kernel = load()
    async with kernel:
        for conn in await kernel.store.connections.list("ann"):
            if conn.id == "conn_alien":
                continue
            cred = await kernel.store.credentials.get(conn.id)
            kernel.sealer.open(cred.sealed, cred.id.encode())
        return await kernel.store.credentials.key_ids()
