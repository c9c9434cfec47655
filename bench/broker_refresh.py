"""Refresh-due (issue 3): ``Broker.refresh_due`` over 10,000 credentials that expire within the
refresh lead, through the real ``oauth2`` provider (valetkey-oauth: httpx exchanger, token-bucket
rate limiter) against a LOCAL token endpoint, with the real store-sqlite, sealer-local and
secrets-keyring (encrypted-file fallback).

- The token endpoint is a tiny ASGI app under uvicorn in a subprocess on 127.0.0.1 (started by
  this script with ``--serve-endpoint``): it answers ``grant_type=refresh_token`` with a fresh
  access token, refresh token and ``expires_in = 3600`` and counts the requests it answered.
- A user connector file (``$XDG_CONFIG_HOME/valetkey/connectors/benchlocal.toml``) points at it
  with a rate profile of 1,000,000 requests a minute; the client id comes from
  ``VALETKEY_OAUTH_BENCHLOCAL_CLIENT_ID``.
- 10,000 connections, each with a sealed credential expiring in 4 minutes (the lead is 5).
- Timed: ``refresh_due(limit=batch)`` passes until a pass finds nothing due. Checked: 10,000
  refreshed, nothing else reported, the endpoint saw exactly 10,000 refresh requests, nothing is
  due afterwards, every credential is at version 2 and a sample of vends returns the endpoint's
  tokens.
- Baseline in the same run: 10,000 bare POSTs of the same form to the same endpoint, one at a
  time, with one ``httpx.AsyncClient`` (keep-alive), parsing the JSON answer.
- Also timed alone: the store and sealer work of one refresh without the HTTP call (the hops
  ``refresh_due`` makes per credential: connection read, lease acquire, credential re-read,
  seal, versioned replace, audit append, lease release).

    uv run python bench/broker_refresh.py [--n 10000] [--batch 100]

Everything runs in a temp folder that is removed at the end; the endpoint subprocess is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker_vend import OWNER, Server, Stats, bench_env, fill, timed

SLUG = "benchlocal"
CLIENT_ID = "valetkey-bench"


# ---------------------------------------------------------------------- the token endpoint


def serve_endpoint() -> None:
    """``--serve-endpoint`` (internal): the local token endpoint. POST /token answers a
    refresh_token grant of client ``valetkey-bench``; GET /count says how many it answered."""
    import socket

    import uvicorn

    answered = 0

    async def respond(send, status: int, data: dict) -> None:  # type: ignore[no-untyped-def]
        body = json.dumps(data).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        nonlocal answered
        if scope["type"] != "http":
            return
        raw, more = b"", True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/count" and scope["method"] == "GET":
            await respond(send, 200, {"count": answered})
            return
        if scope["path"] != "/token" or scope["method"] != "POST":
            await respond(send, 404, {"error": "not_found"})
            return
        form = parse_qs(raw.decode())
        if (
            form.get("grant_type") != ["refresh_token"]
            or not form.get("refresh_token", [""])[0]
            or form.get("client_id") != [CLIENT_ID]
        ):
            await respond(send, 400, {"error": "invalid_request"})
            return
        answered += 1
        await respond(
            send,
            200,
            {
                "access_token": f"bench-at-{answered}-{secrets.token_hex(16)}",
                "refresh_token": f"bench-rt-{answered}-{secrets.token_hex(24)}",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )

    # IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (with protocol 0 it does
    # not, and uvicorn's two writes per response meet Nagle + delayed ACK: ~40 ms per request)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)  # connections queue from now on, before uvicorn accepts
    sys.stderr.write(f"serving on http://127.0.0.1:{sock.getsockname()[1]}\n")
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def connector_toml(base: str) -> str:
    return f"""slug = "{SLUG}"
name = "Bench local token endpoint"
description = "bench/broker_refresh.py: a token endpoint on 127.0.0.1"

[auth]
type = "oauth2"
authorize_url = "{base}/authorize"
token_url = "{base}/token"
client_auth = "none"
pkce = true

[rate]
requests = 1000000
per_seconds = 60
"""


# ---------------------------------------------------------------------- the measurements


class Counter(logging.Handler):
    """Counts warnings and errors (a refresh that fails while the token is still valid is only
    logged by the broker, and the old token kept)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1


async def bare_posts(base: str, n: int) -> Stats:
    import httpx

    form = {"grant_type": "refresh_token", "refresh_token": "x" * 40, "client_id": CLIENT_ID}
    async with httpx.AsyncClient(headers={"Accept": "application/json"}) as client:
        for _ in range(50):  # warm-up (counted by the endpoint, subtracted later)
            (await client.post(f"{base}/token", data=form)).raise_for_status()

        async def one() -> None:
            response = await client.post(f"{base}/token", data=form)
            response.raise_for_status()
            response.json()

        return await timed(one, n)


async def endpoint_count(base: str) -> int:
    import httpx

    async with httpx.AsyncClient() as client:
        return int((await client.get(f"{base}/count")).json()["count"])


async def bench(base: str, n: int, batch: int, parts: int) -> None:
    from valetkey.kernel import load
    from valetkey_broker.broker import Broker
    from valetkey_hookspecs import Secret, utcnow

    counter = Counter()
    kernel = load()
    async with kernel:
        connector = kernel.connectors.get(SLUG)  # the user file, or NotFound
        assert connector.rate is not None
        assert connector.rate.requests == 1_000_000
        broker = Broker(kernel, kernel.plugin_config("broker"))
        store = kernel.store
        start = time.perf_counter()
        ids = await fill(kernel, n, connector=SLUG, expires_in=240.0, prefix="old")
        fill_s = time.perf_counter() - start
        lead = broker.config.refresh_lead
        assert len(await store.credentials.due(utcnow() + _seconds(lead), n + 1)) == n

        # baseline: bare POSTs to the same endpoint
        before = await endpoint_count(base)
        bare = await bare_posts(base, n)
        bare_seen = await endpoint_count(base) - before - 50

        # the broker: refresh_due passes until nothing is due
        before = await endpoint_count(base)
        logging.getLogger("valetkey").addHandler(counter)
        refreshed = rate_limited = failed = reauth = skipped = passes = 0
        pass_times: list[float] = []
        start = time.perf_counter()
        while True:
            t = time.perf_counter()
            report = await broker.refresh_due(limit=batch)
            pass_times.append(time.perf_counter() - t)
            passes += 1
            refreshed += len(report.refreshed)
            rate_limited += len(report.rate_limited)
            failed += len(report.failed)
            reauth += len(report.needs_reauth)
            skipped += len(report.skipped)
            if not report.refreshed or passes > n // batch + 10:
                break
        wall = time.perf_counter() - start
        logging.getLogger("valetkey").removeHandler(counter)
        seen = await endpoint_count(base) - before
        still_due = await store.credentials.due(utcnow() + _seconds(lead), 10)
        versions = [(await store.credentials.get(cid)).version for cid in ids]
        sample = [await broker.vend(OWNER, cid) for cid in ids[:: max(1, n // 200)]]

        # the refresh's own store and sealer work, without the HTTP call
        conn_id = ids[0]
        cred_id = (await store.credentials.get(conn_id)).id
        fresh = Secret(
            access_token="bench-at-x-" + secrets.token_hex(16),
            refresh_token="bench-rt-x-" + secrets.token_hex(24),
            token_type="Bearer",
            expires_at=utcnow() + _seconds(3600),
        )
        holder = f"bench:{os.getpid()}"

        async def store_work() -> None:
            conn = await store.connections.get(conn_id)
            assert await store.leases.acquire(f"refresh:{conn_id}", holder, 30.0)
            _c, cred = await store.credentials.get_with_connection(conn_id)
            assert cred is not None
            kernel.sealer.open(cred.sealed, cred_id.encode())
            sealed = kernel.sealer.seal(fresh.to_bytes(), cred_id.encode())
            await store.credentials.replace(
                conn_id, sealed, fresh.expires_at, expected_version=cred.version
            )
            await store.audit.append(
                "refresh", actor="bench", owner=conn.owner, connection_id=conn_id
            )
            await store.leases.release(f"refresh:{conn_id}", holder)

        local = await timed(store_work, parts)

    checks = {
        f"refreshed == {n}": refreshed == n,
        "nothing rate-limited, failed, re-auth or skipped": not (
            rate_limited or failed or reauth or skipped
        ),
        f"endpoint answered exactly {n} refresh requests": seen == n,
        "no warning logged during the passes": counter.seen == 0,
        "nothing due afterwards": not still_due,
        "every credential at version 2": set(versions) == {2},
        "vends return the endpoint's tokens": all(
            s.access_token and s.access_token.startswith("bench-at-") for s in sample
        ),
        f"baseline: endpoint answered {n} bare POSTs": bare_seen == n,
    }
    rate = refreshed / wall
    print(f"\nRefresh-due over {n:,} credentials, local token endpoint (uvicorn, subprocess)")
    print(f"  fill: {n:,} connections + sealed credentials in {fill_s:.1f} s through the store API")
    print(f"  {'':<52}{'per second':>12}{'per item':>12}   ratio")
    print(
        f"  {'bare POST /token, one httpx.AsyncClient (base)':<52}{bare.rate:>10,.0f}/s"
        f"{bare.wall / n * 1000:>9.2f} ms        -   (p50 {bare.p50_us / 1000:.2f} ms, "
        f"p99 {bare.p99_us / 1000:.2f} ms)"
    )
    print(
        f"  {f'Broker.refresh_due(limit={batch}), {passes} passes':<52}{rate:>10,.0f}/s"
        f"{wall / refreshed * 1000 if refreshed else 0:>9.2f} ms"
        f"   {(wall / max(refreshed, 1)) / (bare.wall / n):5.1f}x  (wall {wall:.1f} s; "
        f"a pass: median {sorted(pass_times)[len(pass_times) // 2] * 1000:.0f} ms)"
    )
    print(
        f"  {'one refresh store+sealer work alone (no HTTP)':<52}{local.rate:>10,.0f}/s"
        f"{local.wall / parts * 1000:>9.2f} ms        -   (p50 {local.p50_us / 1000:.2f} ms, "
        f"p99 {local.p99_us / 1000:.2f} ms; 6 store hops, 4 of them writes)"
    )
    for name, ok in checks.items():
        print(f"  check: {name}: {'ok' if ok else 'FAILED'}")
    if not all(checks.values()):
        print(
            f"  (refreshed {refreshed}, rate-limited {rate_limited}, failed {failed}, re-auth "
            f"{reauth}, skipped {skipped}; endpoint saw {seen}; warnings {counter.seen}; "
            f"versions {sorted(set(versions))})"
        )
        raise SystemExit(1)


def _seconds(value: float):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    return timedelta(seconds=value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="credentials due")
    parser.add_argument("--batch", type=int, default=100, help="refresh_due(limit=...)")
    parser.add_argument("--parts", type=int, default=2000, help="timed store-work rounds")
    parser.add_argument("--serve-endpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_endpoint:
        serve_endpoint()
        return
    tmp = Path(tempfile.mkdtemp(prefix="valetkey-bench-"))
    endpoint = None
    try:
        env = bench_env(tmp)
        env[f"VALETKEY_OAUTH_{SLUG.upper()}_CLIENT_ID"] = CLIENT_ID
        os.environ.update(env)
        endpoint = Server([sys.executable, __file__, "--serve-endpoint"], dict(os.environ))
        folder = tmp / "config" / "valetkey" / "connectors"
        folder.mkdir(parents=True)
        (folder / f"{SLUG}.toml").write_text(connector_toml(endpoint.url))
        asyncio.run(bench(endpoint.url, args.n, args.batch, args.parts))
    finally:
        if endpoint is not None:
            endpoint.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
