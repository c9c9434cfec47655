"""Vends per second over HTTP (issue 8): ``valetkey serve`` on one PostgreSQL database with 1, 2
and 3 server processes, against the SQLite store with 1 server — all in the same run.

Each configuration gets a fresh ``$VALETKEY_HOME`` holding ``--connections`` API-key
connections and one REST API token; the servers start, then ``--clients`` keep-alive httpx
clients (asyncio, one process) send ``POST /api/connections/{id}/token`` for random connections,
spread round-robin over the servers, for ``--seconds``. PostgreSQL is a throwaway server from
Debian's ``postgresql`` package on 127.0.0.1 (tests/fixtures/postgres.py), ``fsync`` off.

    uv run python bench/store_postgres.py [--seconds 5] [--clients 24] [--connections 200]

Everything shares this machine's cores (servers, PostgreSQL, the load generator), so the figures
show the cost of the shared database per vend, not the scaling several hosts would give.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

from postgres import running_postgres  # noqa: E402


def _env(home: Path, config: Path, dsn: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "VALETKEY_HOME": str(home),
        "VALETKEY_CONFIG": str(config),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "VALETKEY_OWNER": "ann",
        "VALETKEY_LOG_LEVEL": "WARNING",
    }
    if dsn:
        env["VALETKEY_PG_DSN"] = dsn
    return env


def _prepare(root: Path, name: str, dsn: str | None, connections: int) -> tuple[dict, str, list]:
    home = root / name
    home.mkdir(mode=0o700)
    config = home / "plugins.toml"
    config.write_text(
        '[select]\nstore = "postgres"\n[plugin.store-postgres]\n'
        'dsn = { "$env" = "VALETKEY_PG_DSN" }\npool_max_size = 10\n'
        if dsn
        else ""
    )
    env = _env(home, config, dsn)
    script = f"""
import asyncio, json, sys
from valetkey.kernel import load
from valetkey_broker.broker import Broker
from valetkey_hookspecs import Secret

async def main():
    kernel = load()
    async with kernel:
        broker = Broker(kernel)
        ids = []
        for n in range({connections}):
            conn = await broker.create_connection("ann", "openai")
            await broker.store_secret("ann", conn.id, Secret(api_key=f"sk-bench-{{n:06d}}-xyz"))
            ids.append(conn.id)
        print(json.dumps(ids))

asyncio.run(main())
"""
    ids = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    token = json.loads(
        subprocess.run(
            [sys.executable, "-m", "valetkey", "tokens", "create", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["token"]
    return env, token, ids


def _start(env: dict) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "valetkey", "serve", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if "serving on" in line:
            url = line.split("serving on", 1)[1].split()[0]
            return proc, url
        if time.monotonic() > deadline:
            break
    raise RuntimeError("valetkey serve did not start")


async def _load(urls: list[str], token: str, ids: list[str], clients: int, seconds: float):
    headers = {"Authorization": f"Bearer {token}"}
    done = errors = 0
    stop = time.monotonic() + seconds
    latencies: list[float] = []

    async def worker(n: int) -> None:
        nonlocal done, errors
        url = urls[n % len(urls)]
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            while time.monotonic() < stop:
                cid = random.choice(ids)
                started = time.perf_counter()
                response = await client.post(f"/api/connections/{cid}/token")
                latencies.append(time.perf_counter() - started)
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

    await asyncio.gather(*(worker(n) for n in range(clients)))
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
    return done / seconds, errors, p50


def run(name: str, env: dict, token: str, ids: list, servers: int, args) -> dict:
    procs = [_start(env) for _ in range(servers)]
    try:
        # warm-up, then the measured run
        asyncio.run(_load([u for _p, u in procs], token, ids, args.clients, 1.0))
        rate, errors, p50 = asyncio.run(
            _load([u for _p, u in procs], token, ids, args.clients, args.seconds)
        )
    finally:
        for proc, _url in procs:
            proc.terminate()
        for proc, _url in procs:
            proc.communicate(timeout=30)
    row = {
        "store": name,
        "servers": servers,
        "vends_per_s": round(rate),
        "errors": errors,
        "p50_ms": round(p50, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="valetkey-bench-pg-"))
    try:
        with running_postgres() as pg:
            rows = []
            env, token, ids = _prepare(root, "sqlite", None, args.connections)
            rows.append(run("sqlite", env, token, ids, 1, args))
            dsn = pg.create_database("bench")
            env, token, ids = _prepare(root, "postgres", dsn, args.connections)
            for servers in (1, 2, 3):
                rows.append(run("postgres", env, token, ids, servers, args))
        base = rows[0]["vends_per_s"] or 1
        print("\nstore     servers  vends/s  vs sqlite x1  p50 ms  errors")
        for row in rows:
            print(
                f"{row['store']:<9} {row['servers']:>7}  {row['vends_per_s']:>7}  "
                f"{row['vends_per_s'] / base:>11.2f}  {row['p50_ms']:>6}  {row['errors']:>6}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
