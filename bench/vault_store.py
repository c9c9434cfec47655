"""Vault and store throughput with the default plugins, each against a baseline run in the same
process:

- seal+open of a typical OAuth secret through sealer-local (envelope: fresh data key, wrap,
  AES-GCM) vs one bare AES-256-GCM encrypt+decrypt of the same bytes with a fixed key;
- store-sqlite ``credentials.put`` and the vend-path read ``credentials.get_with_connection``
  (aiosqlite, one await each) vs the same single-row statements on plain ``sqlite3``.

    uv run python bench/vault_store.py [--n 5000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import anyio


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f}/s"


def bench_sealer(n: int) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from valetkey.kernel import load
    from valetkey_hookspecs import Secret

    kernel = load()
    sealer = kernel.sealer
    plaintext = Secret(
        access_token="gho_" + secrets.token_hex(20), refresh_token="ghr_" + secrets.token_hex(30)
    ).to_bytes()
    aad = b"cred_0123456789abcdef"
    sealer.open(sealer.seal(plaintext, aad), aad)  # load the key ring once
    start = time.perf_counter()
    for _ in range(n):
        sealer.open(sealer.seal(plaintext, aad), aad)
    envelope = time.perf_counter() - start
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    start = time.perf_counter()
    for _ in range(n):
        nonce = os.urandom(12)
        aead.decrypt(nonce, aead.encrypt(nonce, plaintext, aad), aad)
    bare = time.perf_counter() - start
    print(f"seal+open (sealer-local)        {rate(n, envelope)}  {envelope / n * 1e6:6.1f} µs each")
    print(f"bare AES-GCM enc+dec (baseline) {rate(n, bare)}  {bare / n * 1e6:6.1f} µs each")
    print(f"  envelope cost: {envelope / bare:.1f}x the bare AEAD round trip")


async def bench_store(n: int, home: Path) -> None:
    from valetkey.kernel import load
    from valetkey_hookspecs import Connection, Credential, CredentialKind, Sealed

    kernel = load()
    sealed = Sealed(os.urandom(160), os.urandom(60), "k1")
    async with kernel:
        store = kernel.store
        for i in range(n):
            await store.connections.create(Connection(id=f"c{i}", owner="ann", connector="gh"))
        start = time.perf_counter()
        for i in range(n):
            await store.credentials.put(
                Credential(
                    id=f"cred{i}", connection_id=f"c{i}", kind=CredentialKind.OAUTH2, sealed=sealed
                )
            )
        put = time.perf_counter() - start
        lat = []
        for i in range(n):
            t = time.perf_counter()
            await store.credentials.get_with_connection(f"c{i}", "ann")
            lat.append(time.perf_counter() - t)
        get = sum(lat)
    raw = sqlite3.connect(home / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("CREATE TABLE c (id TEXT PRIMARY KEY, owner TEXT)")
    raw.execute("CREATE TABLE cred (id TEXT PRIMARY KEY, cid TEXT UNIQUE, ct BLOB, wk BLOB)")
    raw.executemany("INSERT INTO c VALUES (?, 'ann')", [(f"c{i}",) for i in range(n)])
    start = time.perf_counter()
    for i in range(n):
        raw.execute(
            "INSERT OR REPLACE INTO cred VALUES (?, ?, ?, ?)",
            (f"cred{i}", f"c{i}", sealed.ciphertext, sealed.wrapped_key),
        )
    raw_put = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(n):
        raw.execute(
            "SELECT * FROM c LEFT JOIN cred ON cred.cid = c.id WHERE c.id = ? AND owner = ?",
            (f"c{i}", "ann"),
        ).fetchone()
    raw_get = time.perf_counter() - start
    lat_us = sorted(x * 1e6 for x in lat)
    print(f"credentials.put (store-sqlite)  {rate(n, put)}")
    print(f"plain sqlite3 upsert (baseline) {rate(n, raw_put)}   ratio {put / raw_put:.1f}x")
    p50, p99 = statistics.median(lat_us), lat_us[int(len(lat_us) * 0.99)]
    print(f"get_with_connection             {rate(n, get)}   p50 {p50:.0f} µs, p99 {p99:.0f} µs")
    print(f"plain sqlite3 join (baseline)   {rate(n, raw_get)}   ratio {get / raw_get:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VALETKEY_HOME"] = f"{tmp}/home"
        os.environ["VALETKEY_CONFIG"] = str(Path(__file__).resolve().parents[1] / "plugins.toml")
        os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
        bench_sealer(args.n)
        anyio.run(bench_store, args.n, Path(tmp))


if __name__ == "__main__":
    main()
