"""Warm vend (issue 3): ``Broker.vend`` of an OAuth credential that is not near expiry, with the
real store-sqlite, sealer-local and secrets-keyring (encrypted-file fallback), each figure next to
a baseline measured in the same run:

1. in-process, N sequential vends and K concurrent coroutines, vs the store read alone
   (``credentials.get_with_connection``, the first step of a vend): the ratio is what the decrypt,
   the refresh check and the audit append add. The decrypt (``sealer.open``) and the audit append
   are also timed alone, to show where the time goes;
2. over HTTP: the real ``valetkey serve`` in a subprocess, ``POST /api/connections/{id}/token``
   driven by ``hey`` (keep-alive, C workers, a fixed duration), vs ``GET /healthz`` on the same
   server with the same settings; without ``hey`` an asyncio + httpx keep-alive loop does it;
3. at scale: vends of random connections in a store of 100,000 connections, vs the same in a
   store of 100 (two kernels open side by side, measured in alternating blocks); the fill through
   the store API is timed too.

    uv run python bench/broker_vend.py [--n 5000] [--concurrency 16] [--http-seconds 5]
        [--http-connections 20] [--scale 100000]

Goals (issue 3): in-process vend p50 <= 1 ms; HTTP vend >= 50% of the /healthz request rate.
Everything runs in a temp folder that is removed at the end; traffic stays on 127.0.0.1. The
HTTP section passes a throwaway API token of that temp home to ``hey`` on its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWNER = "bench"
CONNECTOR = "github"  # a built-in OAuth2 connector: a warm vend never calls the provider
SEED = 3


# ---------------------------------------------------------------------- helpers


@dataclass
class Stats:
    """Latencies (seconds) of one measurement and its wall time."""

    lat: list[float]
    wall: float

    @property
    def p50_us(self) -> float:
        return statistics.median(self.lat) * 1e6

    @property
    def p99_us(self) -> float:
        ordered = sorted(self.lat)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6

    @property
    def rate(self) -> float:
        return len(self.lat) / self.wall


def row(name: str, stats: Stats, base: Stats | None = None) -> str:
    ratio = f"{stats.p50_us / base.p50_us:5.1f}x" if base is not None else "     -"
    return f"  {name:<44}{stats.p50_us:>9.0f}{stats.p99_us:>9.0f}{stats.rate:>12,.0f}/s   {ratio}"


def header() -> str:
    return f"  {'':<44}{'p50 µs':>9}{'p99 µs':>9}{'per second':>14}   p50 ratio"


def bench_env(tmp: Path) -> dict[str, str]:
    """The environment of every kernel here: a temp home, config and cache; the repo's
    plugins.toml; the secret store's encrypted-file fallback instead of an OS keyring."""
    return {
        "VALETKEY_HOME": str(tmp / "home"),
        "VALETKEY_CONFIG": str(REPO / "plugins.toml"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "VALETKEY_OWNER": OWNER,
    }


async def fill(
    kernel: object,
    n: int,
    *,
    connector: str = CONNECTOR,
    expires_in: float = 7200.0,
    prefix: str = "gho",
    chunk: int = 500,
) -> list[str]:
    """``n`` ACTIVE connections of ``OWNER``, each with a sealed OAuth credential (access and
    refresh token, expiring in ``expires_in`` s), written through the store API: chunks of
    ``connections.create`` then ``credentials.put`` awaited together (one aiosqlite hop each,
    queued back to back). The credential ids and seal AAD are the broker's own."""
    from valetkey_broker.ids import credential_id, new_id
    from valetkey_hookspecs import Connection, Credential, CredentialKind, Secret, utcnow

    store, sealer = kernel.store, kernel.sealer  # type: ignore[attr-defined]
    expires_at = utcnow() + timedelta(seconds=expires_in)
    ids: list[str] = []
    for start in range(0, n, chunk):
        conns, creds = [], []
        for i in range(start, min(n, start + chunk)):
            cid = new_id("conn")
            cred_id = credential_id(cid)
            secret = Secret(
                access_token=f"{prefix}_{i}_{secrets.token_hex(16)}",
                refresh_token=f"{prefix}r_{i}_{secrets.token_hex(24)}",
                token_type="Bearer",
                expires_at=expires_at,
            )
            conns.append(Connection(id=cid, owner=OWNER, connector=connector))
            creds.append(
                Credential(
                    id=cred_id,
                    connection_id=cid,
                    kind=CredentialKind.OAUTH2,
                    sealed=sealer.seal(secret.to_bytes(), cred_id.encode()),
                    expires_at=expires_at,
                )
            )
        await asyncio.gather(*(store.connections.create(c) for c in conns))
        await asyncio.gather(*(store.credentials.put(c) for c in creds))
        ids.extend(c.id for c in conns)
    return ids


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> Stats:
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - t)
    return Stats(lat, time.perf_counter() - start)


async def alternating(
    cases: dict[str, Callable[[], Awaitable[object]]], n: int, block: int = 250
) -> dict[str, Stats]:
    """``n`` timed calls of each case, in alternating blocks (drift hits every case alike)."""
    lat: dict[str, list[float]] = {name: [] for name in cases}
    wall = dict.fromkeys(cases, 0.0)
    done = 0
    while done < n:
        size = min(block, n - done)
        for name, fn in cases.items():
            stats = await timed(fn, size)
            lat[name].extend(stats.lat)
            wall[name] += stats.wall
        done += size
    return {name: Stats(lat[name], wall[name]) for name in cases}


async def concurrent(fn: Callable[[], Awaitable[object]], n: int, k: int) -> Stats:
    """``k`` coroutines sharing ``n`` calls; latency includes queueing behind the others."""
    lat: list[float] = []
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            t = time.perf_counter()
            await fn()
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(k)))
    return Stats(lat, time.perf_counter() - start)


# ---------------------------------------------------------------------- 1. in-process


async def bench_inprocess(n: int, k: int) -> None:
    from valetkey.kernel import load
    from valetkey_broker.broker import Broker

    kernel = load()
    async with kernel:
        broker = Broker(kernel, kernel.plugin_config("broker"))
        store = kernel.store
        ids = await fill(kernel, 100)
        rng = random.Random(SEED)
        for cid in ids:  # warm: key ring loaded, statements prepared, pages cached
            await broker.vend(OWNER, cid)
        conn, cred = await store.credentials.get_with_connection(ids[0], OWNER)
        assert cred is not None
        secret = await broker.vend(OWNER, ids[0])
        assert secret.access_token
        assert secret.access_token.startswith("gho_")

        def pick() -> str:
            return rng.choice(ids)

        results = await alternating(
            {
                "read": lambda: store.credentials.get_with_connection(pick(), OWNER),
                "vend": lambda: broker.vend(OWNER, pick()),
            },
            n,
        )
        aad = cred.id.encode()

        async def open_only() -> None:
            kernel.sealer.open(cred.sealed, aad)

        opened = await timed(open_only, n)
        audited = await timed(
            lambda: store.audit.append("vend", actor="bench", owner=OWNER, connection_id=conn.id),
            n,
        )
        from valetkey_broker.api import create_api_token
        from valetkey_broker.ids import hash_token
        from valetkey_hookspecs import utcnow

        _record, api_token = await create_api_token(kernel, OWNER, "bench")

        async def bearer() -> None:  # what the REST API does per request before the vend
            found = await store.api_tokens.find(hash_token(api_token))
            await store.api_tokens.touch(found.id, utcnow())

        authed = await timed(bearer, n)
        conc_read = await concurrent(
            lambda: store.credentials.get_with_connection(pick(), OWNER), n, k
        )
        conc_vend = await concurrent(lambda: broker.vend(OWNER, pick()), n, k)

    read, vend = results["read"], results["vend"]
    print(f"\n1. Warm vend in-process: {n} sequential and {n} over {k} coroutines, 100 connections")
    print(header())
    print(row("store read alone: get_with_connection (base)", read))
    print(row("Broker.vend, sequential", vend, read))
    print(row(f"store read alone, {k} concurrent (base)", conc_read))
    print(row(f"Broker.vend, {k} concurrent", conc_vend, conc_read))
    print("  parts of a vend, timed alone:")
    print(row("sealer.open (decrypt)", opened))
    print(row("audit.append (hash-chained insert)", audited))
    print("  what the REST API adds per request before the vend:")
    print(row("bearer auth: api_tokens.find + touch", authed))
    verdict = "MET" if vend.p50_us <= 1000 else "MISSED"
    print(f"  goal: sequential vend p50 <= 1 ms: {verdict} ({vend.p50_us / 1000:.2f} ms)")


# ---------------------------------------------------------------------- 3. at scale


async def bench_scale(big: int, small: int, n: int, tmp: Path) -> None:
    from valetkey.kernel import load
    from valetkey_broker.broker import Broker

    kernels = {size: load(home=tmp / f"scale-{size}") for size in (small, big)}
    async with kernels[small] as k_small, kernels[big] as k_big:
        ids_small = await fill(k_small, small)
        start = time.perf_counter()
        ids_big = await fill(k_big, big)
        fill_s = time.perf_counter() - start
        b_small = Broker(k_small, k_small.plugin_config("broker"))
        b_big = Broker(k_big, k_big.plugin_config("broker"))
        rng = random.Random(SEED)
        for _ in range(200):
            await b_small.vend(OWNER, rng.choice(ids_small))
            await b_big.vend(OWNER, rng.choice(ids_big))
        results = await alternating(
            {
                "read small": lambda: k_small.store.credentials.get_with_connection(
                    rng.choice(ids_small), OWNER
                ),
                "read big": lambda: k_big.store.credentials.get_with_connection(
                    rng.choice(ids_big), OWNER
                ),
                "vend small": lambda: b_small.vend(OWNER, rng.choice(ids_small)),
                "vend big": lambda: b_big.vend(OWNER, rng.choice(ids_big)),
            },
            n,
        )
    size_mb = sum(f.stat().st_size for f in (tmp / f"scale-{big}").rglob("*.db*")) / 1e6
    print(
        f"\n3. Vend of random connections: {big:,} vs {small:,} connections in the store, {n} each"
    )
    print(
        f"  fill through the store API: {big:,} connections + sealed credentials in "
        f"{fill_s:.1f} s ({big / fill_s:,.0f}/s); database files {size_mb:.0f} MB"
    )
    print(header())
    print(row(f"store read alone, {small:,} connections (base)", results["read small"]))
    print(row(f"store read alone, {big:,} connections", results["read big"], results["read small"]))
    print(row(f"Broker.vend, {small:,} connections (base)", results["vend small"]))
    print(row(f"Broker.vend, {big:,} connections", results["vend big"], results["vend small"]))
    p50 = results["vend big"].p50_us
    print(
        f"  goal: vend p50 <= 1 ms with {big:,} connections: "
        f"{'MET' if p50 <= 1000 else 'MISSED'} ({p50 / 1000:.2f} ms)"
    )


# ---------------------------------------------------------------------- 2. over HTTP


@dataclass
class Load:
    rate: float
    p50_ms: float
    p99_ms: float
    count: int
    non_200: int


def run_hey(url: str, seconds: float, conc: int, headers: list[str], method: str) -> Load:
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(conc), "-cpus", "1", "-m", method]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout

    def num(pattern: str) -> float:
        found = re.search(pattern, out)
        if found is None:
            raise RuntimeError(f"unexpected hey output (no {pattern!r}):\n{out}")
        return float(found.group(1))

    codes = {int(c): int(k) for c, k in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    return Load(
        rate=num(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=num(r"50% in ([\d.]+) secs") * 1000,
        p99_ms=num(r"99% in ([\d.]+) secs") * 1000,
        count=sum(codes.values()),
        non_200=sum(v for c, v in codes.items() if c != 200) + len(re.findall(r"Error", out)),
    )


def run_httpx(url: str, seconds: float, conc: int, headers: list[str], method: str) -> Load:
    """The fallback load generator: ``conc`` keep-alive connections, one request at a time each."""
    import httpx

    hdrs = dict(h.split(": ", 1) for h in headers)

    async def main() -> Load:
        lat: list[float] = []
        bad = [0]
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(limits=limits, headers=hdrs) as client:
            end = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    r = await client.request(method, url)
                    lat.append(time.perf_counter() - t)
                    bad[0] += r.status_code != 200

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conc)))
            wall = time.perf_counter() - start
        s = Stats(lat, wall)
        return Load(s.rate, s.p50_us / 1000, s.p99_us / 1000, len(lat), bad[0])

    return asyncio.run(main())


class Server:
    """A server subprocess that prints ``serving on http://127.0.0.1:PORT`` on stderr; stderr is
    drained by a thread; stopped with SIGTERM (then SIGKILL after 15 s)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(30) or self._url is None:
            self.stop()
            raise RuntimeError(f"{cmd} did not start:\n" + "".join(self.lines[-20:]))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
            if found and self._url is None:
                self._url = found.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def url(self) -> str:
        assert self._url is not None
        return self._url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure_http(
    server: Server, cid: str, token: str, seconds: float, conc: int
) -> tuple[str, Load, Load]:
    gen, tool = (run_hey, "hey") if shutil.which("hey") else (run_httpx, "asyncio+httpx")
    health = (f"{server.url}/healthz", [], "GET")
    vend = (
        f"{server.url}/api/connections/{cid}/token",
        [f"Authorization: Bearer {token}"],
        "POST",
    )
    for url, hdrs, method in (health, vend):  # warm-up, not measured
        gen(url, 1, conc, hdrs, method)
    base = gen(health[0], seconds, conc, health[1], health[2])
    got = gen(vend[0], seconds, conc, vend[1], vend[2])
    return tool, base, got


def bench_http(tmp: Path, seconds: float, conc: int) -> None:
    import httpx

    env = {**os.environ, **bench_env(tmp), "VALETKEY_HOME": str(tmp / "http-home")}
    made = subprocess.run(
        [sys.executable, "-m", "valetkey", "tokens", "create", "--owner", OWNER, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(made.stdout)["token"]
    servers = {
        "valetkey serve": [sys.executable, "-m", "valetkey", "serve", "--port", "0"],
    }
    results: dict[str, tuple[str, Load, Load]] = {}
    cid = ""
    for name, cmd in servers.items():
        server = Server(cmd, env)
        try:
            if not cid:  # one connection with a warm credential, made through the API
                auth = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=server.url, headers=auth) as client:
                    conn = client.post("/api/connections", json={"connector": CONNECTOR})
                    conn.raise_for_status()
                    cid = conn.json()["id"]
                    client.post(
                        f"/api/connections/{cid}/credentials",
                        json={
                            "access_token": "gho_" + secrets.token_hex(20),
                            "refresh_token": "ghr_" + secrets.token_hex(30),
                            "expires_in": 7200,
                        },
                    ).raise_for_status()
            with httpx.Client(base_url=server.url) as client:
                vended = client.post(
                    f"/api/connections/{cid}/token", headers={"Authorization": f"Bearer {token}"}
                )
                vended.raise_for_status()
                assert vended.json()["token"].startswith("gho_")
            results[name] = measure_http(server, cid, token, seconds, conc)
        finally:
            server.stop()
    tool = next(iter(results.values()))[0]
    print(
        f"\n2. Warm vend over HTTP: uvicorn, one process; {tool} with {conc} keep-alive "
        f"connections, {seconds:g} s per line"
    )
    print(f"  {'':<50}{'p50 ms':>8}{'p99 ms':>8}{'requests/s':>14}  ratio  (responses, non-200)")
    for name, (_tool, base, got) in results.items():
        print(f"  {name}:")
        for what, res in (("GET /healthz (base)", base), ("POST /api/connections/{id}/token", got)):
            print(
                f"    {what:<48}{res.p50_ms:>8.2f}{res.p99_ms:>8.2f}{res.rate:>12,.0f}/s"
                f"  {res.rate / base.rate:5.2f}  ({res.count}, {res.non_200})"
            )
        share = got.rate / base.rate
        print(
            f"    goal: HTTP vend >= 50% of the /healthz rate: "
            f"{'MET' if share >= 0.5 else 'MISSED'} ({share:.0%})"
        )


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="timed vends per case")
    parser.add_argument("--concurrency", type=int, default=16, help="coroutines, in-process")
    parser.add_argument("--http-seconds", type=float, default=5.0, help="0: skip the HTTP part")
    parser.add_argument("--http-connections", type=int, default=20)
    parser.add_argument("--scale", type=int, default=100_000, help="0: skip the scale part")
    parser.add_argument("--scale-small", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="valetkey-bench-"))
    try:
        os.environ.update(bench_env(tmp))
        asyncio.run(bench_inprocess(args.n, args.concurrency))
        if args.http_seconds > 0:
            bench_http(tmp, args.http_seconds, args.http_connections)
        if args.scale > 0:
            asyncio.run(bench_scale(args.scale, args.scale_small, args.n, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
