"""The proxy engine (``server.py``, ``upstream.py``) over real sockets on 127.0.0.1 and real TLS:
local HTTP and HTTPS upstreams, the engine with a small real gate (``engine_helpers.TestGate``),
clients: raw sockets, httpx and curl."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from valetkey_proxy.ca import LocalCA
from valetkey_proxy.server import ProxyServer
from valetkey_proxy.upstream import UpstreamPool, upstream_ssl_context


def _load_helpers() -> ModuleType:
    name = "valetkey_proxy_tests_engine_helpers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).with_name("engine_helpers.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


H = _load_helpers()
pytestmark = pytest.mark.anyio
MiB = 1024 * 1024


@dataclass
class Env:
    gate: object
    proxy: ProxyServer
    ca: LocalCA
    up: object  # plain HTTP upstream
    tls_up: object  # HTTPS upstream with a test-CA certificate
    pki: object
    tmp: Path

    @property
    def proxy_url(self) -> str:
        return f"http://valetkey:{H.TOKEN}@127.0.0.1:{self.proxy.port}"

    def client(self, **kw: object) -> httpx.AsyncClient:
        verify = ssl.create_default_context(cafile=str(self.ca.cert_path))
        return httpx.AsyncClient(proxy=self.proxy_url, verify=verify, timeout=10, **kw)


async def _make_env(tmp: Path, *, trust_test_ca: bool = True, **proxy_kw: object) -> Env:
    pki = H.make_test_pki(tmp / "pki")
    up = await H.Upstream().start()
    tls_up = await H.Upstream(pki.server_context()).start()
    gate = H.TestGate(routes={"api.github.test": ("127.0.0.1", tls_up.port)})
    ca = LocalCA.load_or_create(tmp / "ca", None)
    upstream_ssl = upstream_ssl_context(str(pki.ca_file) if trust_test_ca else None)
    proxy = ProxyServer(gate, ca, upstream_ssl=upstream_ssl, **proxy_kw)  # type: ignore[arg-type]
    await proxy.start()
    return Env(gate, proxy, ca, up, tls_up, pki, tmp)


async def _close_env(env: Env) -> None:
    await env.proxy.close()
    await env.up.close()  # type: ignore[attr-defined]
    await env.tls_up.close()  # type: ignore[attr-defined]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    made = await _make_env(tmp_path)
    try:
        yield made
    finally:
        await _close_env(made)


def _head(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


# ---------------------------------------------------------------------- auth


async def test_no_auth_gets_407_and_upstream_sees_nothing(env: Env) -> None:
    raw = await H.raw_exchange(
        env.proxy.port,
        f"GET http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: x\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    status, headers, body = _head(raw)
    assert status == 407
    assert headers["proxy-authenticate"] == 'Basic realm="valetkey"'
    assert b"Proxy-Authorization" in body
    async with httpx.AsyncClient(
        proxy=f"http://valetkey:{'b' * 64}@127.0.0.1:{env.proxy.port}", timeout=10
    ) as client:
        wrong = await client.get(f"http://127.0.0.1:{env.up.port}/echo")
    assert wrong.status_code == 407
    assert env.up.seen == []
    assert env.gate.authenticated[0] is None
    assert env.gate.completed == []  # no verdict, nothing to record


async def test_auth_is_rechecked_when_the_header_changes_on_a_connection(env: Env) -> None:
    good = f"Proxy-Authorization: {H.basic()}\r\n"
    bad = f"Proxy-Authorization: {H.basic('c' * 64)}\r\n"
    url = f"http://127.0.0.1:{env.up.port}/echo"
    data = (
        f"GET {url} HTTP/1.1\r\nHost: a\r\n{good}\r\n"
        f"GET {url} HTTP/1.1\r\nHost: a\r\n{good}\r\n"
        f"GET {url} HTTP/1.1\r\nHost: a\r\n{bad}Connection: close\r\n\r\n"
    ).encode()
    raw = await H.raw_exchange(env.proxy.port, data)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses == [200, 200, 407]
    assert env.gate.authenticated == [H.basic(), H.basic("c" * 64)]  # cached while unchanged
    assert len(env.up.seen) == 2


# ---------------------------------------------------------------------- plain HTTP


async def test_plain_forward_adds_header_and_strips_hop_by_hop(env: Env) -> None:
    data = (
        f"GET http://127.0.0.1:{env.up.port}/echo?q=1 HTTP/1.1\r\n"
        "Host: wrong.example\r\n"
        f"Proxy-Authorization: {H.basic()}\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Keep-Alive: timeout=5\r\n"
        "TE: trailers\r\n"
        "X-Hop: drop me\r\n"
        "X-Keep: keep me\r\n"
        "Connection: close, X-Hop\r\n\r\n"
    ).encode()
    status, headers, body = _head(await H.raw_exchange(env.proxy.port, data))
    assert status == 200
    assert headers["connection"] == "close"
    got = json.loads(body)
    names = [k.lower() for k, _ in got["headers"]]
    assert ["Host", f"127.0.0.1:{env.up.port}"] in got["headers"]
    assert ["X-Injected", "yes"] in got["headers"]
    assert ["X-Keep", "keep me"] in got["headers"]
    for dropped in ("proxy-authorization", "proxy-connection", "keep-alive", "te", "x-hop"):
        assert dropped not in names
    assert names.count("host") == 1
    assert got["target"] == "/echo?q=1"
    request, _verdict, outcome = env.gate.completed[-1]
    assert request.scheme == "http"
    assert (request.host, request.port, request.target) == ("127.0.0.1", env.up.port, "/echo?q=1")
    assert outcome.status == 200
    assert outcome.bytes_in == len(body)
    assert outcome.error is None


async def test_keep_alive_reuses_upstream_connections(env: Env) -> None:
    async with env.client() as client:
        for i in range(5):
            r = await client.get(f"http://127.0.0.1:{env.up.port}/echo?i={i}")
            assert r.status_code == 200
    assert env.up.connections == 1
    assert env.proxy.pool.opened == 1
    assert {s.conn for s in env.up.seen} == {1}
    assert env.gate.authenticated == [H.basic()]  # one client connection, authenticated once
    assert len(env.gate.completed) == 5


async def test_chunked_request_and_response(env: Env) -> None:
    payload = H.pattern(300_000)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 70_000):
            yield payload[i : i + 70_000]

    async with env.client() as client:
        r = await client.post(f"http://127.0.0.1:{env.up.port}/echo", content=body())
        got = r.json()
        assert got["body_len"] == len(payload)
        seen = env.up.seen[-1]
        assert seen.body == payload
        assert seen.header("Content-Length") == str(len(payload))  # re-framed after buffering
        assert seen.header("Transfer-Encoding") is None
        r = await client.get(f"http://127.0.0.1:{env.up.port}/chunked")
        assert r.text == "hello chunked world"
        assert r.headers["transfer-encoding"] == "chunked"
    assert env.gate.completed[0][2].bytes_out == len(payload)


async def test_large_responses_stream_intact(env: Env) -> None:
    n = 5 * MiB + 123
    async with env.client() as client:
        r = await client.get(f"http://127.0.0.1:{env.up.port}/big?n={n}")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(n)
        assert r.content == H.pattern(n)
        r = await client.get(f"http://127.0.0.1:{env.up.port}/bigchunked?n={n}")
        assert r.content == H.pattern(n)
    assert [o.bytes_in for _, _, o in env.gate.completed] == [n, n]


async def test_buffered_response_is_rewritten_with_a_fixed_length(env: Env) -> None:
    async with env.client() as client:
        r = await client.get(f"http://127.0.0.1:{env.up.port}/transform?n=10")
        assert r.content == b'{"token": "[scrubbed]"}' + b" " * 10
        assert r.headers["content-length"] == str(len(r.content))
        assert r.headers["x-transformed"] == "1"
        r = await client.get(f"http://127.0.0.1:{env.up.port}/transform?n=10&chunked=1")
        assert r.content == b'{"token": "[scrubbed]"}' + b" " * 10
        assert r.headers["content-length"] == str(len(r.content))
        assert "transfer-encoding" not in r.headers
        # bigger than the gate's limit: streamed through untouched
        env.gate.buffer_limit = 100
        r = await client.get(f"http://127.0.0.1:{env.up.port}/transform?n=500")
        assert r.content.startswith(b'{"token": "secret"}')
        assert "x-transformed" not in r.headers
        r = await client.get(f"http://127.0.0.1:{env.up.port}/transform?n=500&chunked=1")
        assert r.content == b'{"token": "secret"}' + b" " * 500
        assert "x-transformed" not in r.headers


async def test_head_204_and_close_delimited_responses(env: Env) -> None:
    async with env.client() as client:
        r = await client.head(f"http://127.0.0.1:{env.up.port}/big?n=100")
        assert r.status_code == 200
        assert r.headers["content-length"] == "100"
        assert r.content == b""
        r = await client.get(f"http://127.0.0.1:{env.up.port}/nocontent")
        assert r.status_code == 204
        r = await client.get(f"http://127.0.0.1:{env.up.port}/close")
        assert r.content == b"until the end"
        r = await client.get(f"http://127.0.0.1:{env.up.port}/echo")
        assert r.status_code == 200
    # HEAD and 204 kept the upstream connection; the close-delimited one could not
    assert env.up.connections == 2


async def test_gate_answers_itself(env: Env) -> None:
    async with env.client() as client:
        r = await client.get(f"http://127.0.0.1:{env.up.port}/answer")
    assert r.status_code == 418
    assert r.content == b"from the gate"
    assert r.headers["x-gate"] == "answered"
    assert env.up.seen == []
    assert env.gate.completed[-1][2].status == 418


# ---------------------------------------------------------------------- CONNECT


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_connect_intercept_with_curl(env: Env) -> None:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--proxy",
        f"http://127.0.0.1:{env.proxy.port}",
        "--proxy-user",
        f"valetkey:{H.TOKEN}",
        "--cacert",
        str(env.ca.cert_path),
        "-H",
        "X-From: curl",
        "https://api.github.test:8443/echo?via=curl",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    got = json.loads(out)
    assert got["target"] == "/echo?via=curl"
    assert ["X-Injected", "yes"] in got["headers"]
    assert ["X-From", "curl"] in got["headers"]
    assert ["Host", "api.github.test:8443"] in got["headers"]
    assert not any(k.lower() == "proxy-authorization" for k, _ in got["headers"])
    assert env.gate.connects == [("api.github.test", 8443)]
    request = env.gate.requests[-1]
    assert (request.scheme, request.host, request.port) == ("https", "api.github.test", 8443)
    assert len(env.tls_up.seen) == 1
    assert env.up.seen == []


async def test_connect_intercept_with_httpx_keeps_one_tunnel(env: Env) -> None:
    async with env.client() as client:
        for i in range(4):
            r = await client.post(f"https://api.github.test/echo?i={i}", content=b"x" * i)
            assert r.status_code == 200
            assert r.json()["body_len"] == i
        r = await client.get(f"https://api.github.test/big?n={2 * MiB}")
        assert r.content == H.pattern(2 * MiB)
    assert env.gate.connects == [("api.github.test", 443)]
    assert env.tls_up.connections == 1
    assert env.ca.minted == 1
    assert all(o.status == 200 for _, _, o in env.gate.completed)


async def test_connect_blocked_gets_407_with_the_rule(env: Env) -> None:
    data = (
        f"CONNECT blocked.test:443 HTTP/1.1\r\nHost: blocked.test:443\r\n"
        f"Proxy-Authorization: {H.basic()}\r\n\r\n"
    ).encode()
    status, headers, body = _head(await H.raw_exchange(env.proxy.port, data))
    assert status == 407
    assert headers["x-valetkey-blocked"] == "network_policy:strict"
    assert body == b"blocked.test is not allowed\n"
    assert env.up.seen == [] and env.tls_up.seen == []
    request, _verdict, outcome = env.gate.completed[-1]
    assert (request.method, request.host, outcome.status) == ("CONNECT", "blocked.test", 407)
    # without auth, a CONNECT is refused before the gate is asked
    data = b"CONNECT api.github.test:443 HTTP/1.1\r\nHost: api.github.test:443\r\n\r\n"
    status, headers, _ = _head(await H.raw_exchange(env.proxy.port, data))
    assert status == 407
    assert "x-valetkey-blocked" not in headers
    assert env.gate.connects == [("blocked.test", 443)]


async def test_plain_http_inside_a_tunnel(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    try:
        writer.write(
            f"CONNECT 127.0.0.1:{env.up.port} HTTP/1.1\r\nProxy-Authorization: {H.basic()}\r\n\r\n"
            f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200")
    got = json.loads(raw.partition(b"\r\n\r\n")[2].partition(b"\r\n\r\n")[2])
    assert ["X-Injected", "yes"] in got["headers"]
    assert env.gate.requests[-1].scheme == "http"


async def test_untrusted_upstream_certificate_gets_502_and_nothing_is_sent(tmp_path: Path) -> None:
    env = await _make_env(tmp_path, trust_test_ca=False)
    try:
        async with env.client() as client:
            r = await client.get("https://api.github.test/echo")
        assert r.status_code == 502
        assert r.headers["x-valetkey-error"] == "tls"
        assert b"api.github.test:443" in r.content
        assert b"certificate" in r.content
        assert env.tls_up.seen == []
        _, _, outcome = env.gate.completed[-1]
        assert outcome.status == 502
        assert outcome.error is not None
    finally:
        await _close_env(env)


async def test_upstream_down_gets_502(env: Env) -> None:
    await env.up.close()
    async with env.client() as client:
        r = await client.get(f"http://127.0.0.1:{env.up.port}/echo")
    assert r.status_code == 502
    assert r.headers["x-valetkey-error"] == "connect"
    assert f"127.0.0.1:{env.up.port}".encode() in r.content
    assert env.gate.completed[-1][2].error.startswith("upstream connect failed")


# ---------------------------------------------------------------------- robustness


async def test_oversize_body_gets_413(tmp_path: Path) -> None:
    env = await _make_env(tmp_path, max_request_body=4096)
    try:
        async with env.client() as client:
            r = await client.post(f"http://127.0.0.1:{env.up.port}/echo", content=b"x" * 5000)
        assert r.status_code == 413
        assert b"4096" in r.content
        # with Expect: 100-continue the answer comes before the body is sent
        data = (
            f"POST http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: a\r\n"
            f"Proxy-Authorization: {H.basic()}\r\nContent-Length: 100000\r\n"
            "Expect: 100-continue\r\n\r\n"
        ).encode()
        status, headers, _ = _head(await H.raw_exchange(env.proxy.port, data))
        assert status == 413
        assert headers["connection"] == "close"
        assert env.up.seen == []
    finally:
        await _close_env(env)


async def test_expect_continue_without_a_run_token_is_refused_before_the_body(env: Env) -> None:
    for auth in ("", "Proxy-Authorization: Basic bm9ib2R5Om5vcGU=\r\n"):
        data = (
            f"POST http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: a\r\n{auth}"
            "Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
        status, headers, _ = _head(await H.raw_exchange(env.proxy.port, data))
        assert status == 407  # not "100 Continue": the body is never asked for
        assert headers["connection"] == "close"
    assert env.up.seen == []


async def test_expect_continue_is_answered(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    try:
        writer.write(
            f"POST http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: a\r\n"
            f"Proxy-Authorization: {H.basic()}\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status, _, body = _head(raw)
    assert status == 200
    assert json.loads(body)["body_len"] == 5
    assert env.up.seen[-1].header("Expect") is None


async def test_malformed_request_gets_400_and_close(env: Env) -> None:
    raw = await H.raw_exchange(env.proxy.port, b"GARBAGE\x01 nonsense\r\n\r\n")
    status, headers, _ = _head(raw)
    assert status == 400
    assert headers["connection"] == "close"
    raw = await H.raw_exchange(env.proxy.port, b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _head(raw)[0] == 400
    assert env.up.seen == []


async def test_slow_headers_are_cut_off(tmp_path: Path) -> None:
    env = await _make_env(tmp_path, header_timeout=0.3, keepalive_timeout=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
        writer.write(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: a\r\n")
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed without an answer
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # idle connection closed
        writer.close()
    finally:
        await _close_env(env)


async def test_local_requests_go_to_the_gate(env: Env) -> None:
    raw = await H.raw_exchange(
        env.proxy.port,
        b"GET /_local/creds HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic eA==\r\n"
        b"Connection: close\r\n\r\n",
    )
    status, _, body = _head(raw)
    assert (status, body) == (200, b"local /_local/creds")
    request, auth = env.gate.locals[-1]
    assert auth == "Basic eA=="
    assert not any(k.lower() == "proxy-authorization" for k, _ in request.headers)
    raw = await H.raw_exchange(
        env.proxy.port,
        f"GET http://127.0.0.1:{env.proxy.port}/_local/abs HTTP/1.1\r\nHost: x\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert _head(raw)[2] == b"local /_local/abs"
    raw = await H.raw_exchange(
        env.proxy.port, b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert _head(raw)[0] == 404
    assert len(env.gate.locals) == 3
    assert env.gate.authenticated == []  # local requests are the gate's to authenticate


async def test_close_stops_accepting(tmp_path: Path) -> None:
    env = await _make_env(tmp_path)
    port = env.proxy.port
    await _close_env(env)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


def test_engine_runs_on_uvloop(tmp_path: Path) -> None:
    """The daemon installs uvloop: its transports are not asyncio.Transport subclasses."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        env = await _make_env(tmp_path)
        try:
            async with env.client() as client:
                plain = await client.get(f"http://127.0.0.1:{env.up.port}/echo")
                tunneled = await client.get(f"https://api.github.test/big?n={MiB}")
            assert ["X-Injected", "yes"] in plain.json()["headers"]
            assert tunneled.content == H.pattern(MiB)
        finally:
            await _close_env(env)

    uvloop.run(scenario())


# ---------------------------------------------------------------------- hardening


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length-framed response from a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, headers, _ = _head(head)
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return status, headers, body


async def test_request_trailers_never_become_headers(env: Env) -> None:
    url = f"http://127.0.0.1:{env.up.port}/echo"
    data = (
        f"POST {url} HTTP/1.1\r\nHost: a\r\nProxy-Authorization: {H.basic()}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n"
        "Authorization: Bearer smuggled\r\nX-Trailer: t\r\n\r\n"
    ).encode()
    status, _, body = _head(await H.raw_exchange(env.proxy.port, data))
    assert status == 200
    got = json.loads(body)
    assert got["body_len"] == 5
    names = {k.lower() for k, _ in got["headers"]}
    assert "authorization" not in names and "x-trailer" not in names
    assert env.gate.requests[-1].header("Authorization") is None
    # a Proxy-Authorization trailer does not authenticate a request that had none
    data = (
        f"POST {url} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        f"Connection: close\r\n\r\n0\r\nProxy-Authorization: {H.basic()}\r\n\r\n"
    ).encode()
    status, _, _ = _head(await H.raw_exchange(env.proxy.port, data))
    assert status == 407
    assert len(env.up.seen) == 1


async def test_response_trailers_never_become_headers(env: Env) -> None:
    async with env.client() as client:
        r = await client.get(f"http://127.0.0.1:{env.up.port}/transform?n=3&trailer=1")
    assert r.status_code == 200
    assert r.content == b'{"token": "[scrubbed]"}   '
    assert r.headers["x-transformed"] == "1"
    assert "x-trailer" not in r.headers


async def test_pipelined_bodies_are_not_read_while_the_worker_is_busy(tmp_path: Path) -> None:
    env = await _make_env(tmp_path, max_request_body=4 * MiB, max_queued_bytes=256 * 1024)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
        auth = f"Proxy-Authorization: {H.basic()}\r\n"
        hold = f"GET http://127.0.0.1:{env.up.port}/hold HTTP/1.1\r\nHost: a\r\n{auth}\r\n"
        body = H.pattern(2 * MiB)
        post = (
            f"POST http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: a\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        count = 6

        async def send() -> None:
            writer.write(hold.encode())
            for _ in range(count):
                writer.write(post)
                await writer.drain()

        sender = asyncio.create_task(send())
        await asyncio.wait_for(env.up.held.wait(), 10)
        (conn,) = env.proxy.connections
        seen = -1
        while conn.received != seen:  # until the proxy stops reading
            seen = conn.received
            await asyncio.sleep(0.2)
        # 12 MiB offered; read: the cap on queued body bytes plus one socket read of slack
        assert conn.received < 1 * MiB
        assert conn.read_paused
        assert conn.queued_bytes <= 256 * 1024 + 256 * 1024
        env.up.release.set()
        status, _, released = await _read_response(reader)
        assert (status, released) == (200, b"released")
        for _ in range(count):
            status, _, got = await _read_response(reader)
            assert status == 200
            assert json.loads(got)["body_len"] == len(body)
        await sender
        writer.close()
        assert [s.body == body for s in env.up.seen[1:]] == [True] * count
    finally:
        await _close_env(env)


async def test_pipelined_requests_queue_at_most_one_while_busy(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    auth = f"Proxy-Authorization: {H.basic()}\r\n"
    writer.write(
        f"GET http://127.0.0.1:{env.up.port}/hold HTTP/1.1\r\nHost: a\r\n{auth}\r\n".encode()
    )
    await asyncio.wait_for(env.up.held.wait(), 10)
    (conn,) = env.proxy.connections
    small = (
        f"POST http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: a\r\n{auth}"
        "Content-Length: 3\r\n\r\nabc"
    ).encode()
    for _ in range(40):  # one write each: the proxy stops reading after the first is queued
        writer.write(small)
        await writer.drain()
        await asyncio.sleep(0.01)
    assert conn.read_paused
    assert len(conn.queue) == 1
    env.up.release.set()
    assert (await _read_response(reader))[0] == 200
    for _ in range(40):
        assert (await _read_response(reader))[0] == 200
    writer.close()


async def test_dribbled_request_body_gets_408(tmp_path: Path) -> None:
    env = await _make_env(tmp_path, body_timeout=0.4, keepalive_timeout=5, header_timeout=5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
        writer.write(
            f"POST http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: a\r\n"
            f"Proxy-Authorization: {H.basic()}\r\nContent-Length: 1000\r\n\r\nx".encode()
        )

        async def dribble() -> None:  # one byte every 50 ms: never idle, never done
            for _ in range(200):
                await asyncio.sleep(0.05)
                if writer.is_closing():
                    return
                writer.write(b"x")

        task = asyncio.create_task(dribble())
        raw = await asyncio.wait_for(reader.read(), 3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
        writer.close()
        status, headers, body = _head(raw)
        assert status == 408
        assert headers["connection"] == "close"
        assert b"request body" in body
        assert env.up.seen == []
    finally:
        await _close_env(env)


async def test_buffer_required_refuses_what_cannot_be_scrubbed(env: Env) -> None:
    env.gate.require_buffer = True
    env.gate.buffer_limit = 100
    base = f"http://127.0.0.1:{env.up.port}"
    async with env.client() as client:
        r = await client.get(f"{base}/transform?n=10")  # fits: scrubbed
        assert r.content == b'{"token": "[scrubbed]"}' + b" " * 10
        for query in ("n=500", "n=500&chunked=1", "n=500&close=1"):
            r = await client.get(f"{base}/transform?{query}")
            assert r.status_code == 502, query
            assert r.headers["x-valetkey-error"] == "response-too-large"
            assert b"too large to scrub" in r.content
            assert b"secret" not in r.content
            _, _, outcome = env.gate.completed[-1]
            assert outcome.status == 502 and outcome.error is not None
            assert env.proxy.pool.idle_count() == 0  # the upstream connection was closed
        r = await client.get(f"{base}/gzip")  # encoded in spite of identity: cannot be scrubbed
        assert r.status_code == 502
        assert r.headers["x-valetkey-error"] == "response-too-large"
        assert env.gate.completed[-1][2].error is not None
        r = await client.head(f"{base}/big?n=5000")  # no body: nothing to scrub
        assert (r.status_code, r.headers["content-length"]) == (200, "5000")
        r = await client.get(f"{base}/nocontent")
        assert r.status_code == 204
    # the agent's connection stayed usable after each 502 (its framing was never broken)
    assert env.gate.authenticated == [H.basic()]
    env.gate.require_buffer = False
    async with env.client() as client:
        r = await client.get(f"{base}/gzip")  # not required: passes through as it came
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"


async def test_buffer_required_asks_for_an_unencoded_whole_body(env: Env) -> None:
    env.gate.require_buffer = True
    headers = {"Accept-Encoding": "gzip, br", "Range": "bytes=0-5", "If-Range": '"v1"'}
    async with env.client() as client:
        r = await client.get(f"http://127.0.0.1:{env.up.port}/echo", headers=headers)
    assert r.status_code == 200
    seen = env.up.seen[-1]
    assert [v for k, v in seen.headers if k.lower() == "accept-encoding"] == ["identity"]
    assert seen.header("Range") is None and seen.header("If-Range") is None
    env.gate.require_buffer = False
    async with env.client() as client:
        await client.get(f"http://127.0.0.1:{env.up.port}/echo", headers=headers)
    assert env.up.seen[-1].header("Range") == "bytes=0-5"  # only when the gate requires it
    assert env.up.seen[-1].header("Accept-Encoding") == "gzip, br"


@pytest.mark.parametrize(
    "head",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "Content-Length: 5\r\nX-Folded: a\r\n b\r\n\r\nhello",
        "Content-Length: 5\r\nX-Folded: a\r\n\tTransfer-Encoding: chunked\r\n\r\nhello",
    ],
    ids=["cl-te", "te-cl", "duplicate-cl", "obs-fold", "obs-fold-tab"],
)
async def test_smuggling_shapes_get_400_and_nothing_is_sent(env: Env, head: str) -> None:
    data = (
        f"POST http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: a\r\n"
        f"Proxy-Authorization: {H.basic()}\r\n{head}"
        f"GET http://127.0.0.1:{env.up.port}/echo HTTP/1.1\r\nHost: a\r\n"
        f"Proxy-Authorization: {H.basic()}\r\n\r\n"
    ).encode()
    raw = await H.raw_exchange(env.proxy.port, data)
    status, headers, _ = _head(raw)
    assert status == 400
    assert headers["connection"] == "close"
    assert raw.count(b"HTTP/1.1 ") == 1
    assert env.up.seen == []
    assert env.gate.requests == []


async def test_stale_pooled_connection_is_retried_for_idempotent_methods_only(env: Env) -> None:
    flaky = await H.FlakyUpstream().start()
    try:
        base = f"http://127.0.0.1:{flaky.port}"
        async with env.client() as client:
            assert (await client.get(f"{base}/one")).status_code == 200
            r = await client.get(f"{base}/two")  # the pooled connection closes unanswered
            assert (r.status_code, r.content) == (200, b"first")
            assert flaky.seen == [("GET", "/one", 1), ("GET", "/two", 1), ("GET", "/two", 2)]
            r = await client.post(f"{base}/three", content=b"once")  # same, but a POST
            assert r.status_code == 502
            assert r.headers["x-valetkey-error"] == "upstream"
        assert flaky.seen[3:] == [("POST", "/three", 2)]  # sent once, never retried
        assert flaky.connections == 2
        _, _, outcome = env.gate.completed[-1]
        assert outcome.status == 502
        assert outcome.error == "upstream closed the connection before responding"
    finally:
        await flaky.close()


async def test_stalled_upstream_gets_504_after_upstream_timeout(tmp_path: Path) -> None:
    env = await _make_env(tmp_path, upstream_timeout=0.3)
    stall = await H.StallUpstream().start()
    try:
        async with env.client() as client:
            r = await client.get(f"http://127.0.0.1:{stall.port}/never")
            assert r.status_code == 504
            assert r.headers["x-valetkey-error"] == "timeout"
            assert f"127.0.0.1:{stall.port}".encode() in r.content
            r = await client.get(f"http://127.0.0.1:{env.up.port}/echo")  # still usable
            assert r.status_code == 200
        _, _, outcome = env.gate.completed[-2]
        assert outcome.status == 504
        assert outcome.error == "upstream timed out"
        for _ in range(50):
            if stall.closed:
                break
            await asyncio.sleep(0.05)
        assert (stall.connections, stall.closed) == (1, 1)  # closed, and not retried
    finally:
        await stall.close()
        await _close_env(env)


async def test_upstream_pool_caps_idle_connections_globally(env: Env) -> None:
    ups = [await H.Upstream().start() for _ in range(4)]
    pool = UpstreamPool(upstream_ssl_context(None), max_idle_per_key=2, max_idle_total=3)
    try:
        conns = [await pool.acquire("127.0.0.1", up.port, tls=False, sni="") for up in ups]
        for conn in conns:
            pool.release(conn, reusable=True)
        assert pool.idle_count() == 3
        assert conns[0].closed  # the oldest idle one was evicted
        assert not any(c.closed for c in conns[1:])
        again = await pool.acquire("127.0.0.1", ups[3].port, tls=False, sni="")
        assert again is conns[3] and pool.idle_count() == 2
        # the per-key cap still applies
        more = [await pool.acquire("127.0.0.1", ups[0].port, tls=False, sni="") for _ in range(3)]
        for conn in more:
            pool.release(conn, reusable=True)
        assert sum(1 for c in more if not c.closed) == 2
        pool.release(again, reusable=True)
        assert pool.idle_count() == 3
        assert pool.opened == 7
    finally:
        pool.close()
        for up in ups:
            await up.close()
