"""Shared pieces of the proxy engine tests (loaded by path: the tests run with
``--import-mode=importlib``):

- :class:`TestGate`, a small but real :class:`~valetkey_proxy.exchange.Gatekeeper`: one fixed
  run token, a header added to every request, a blocked host, reroutes (``connect_to``), buffered
  responses rewritten for ``/transform`` targets, and a local endpoint;
- :class:`Upstream`, an HTTP/1.1 server on 127.0.0.1 (plain or TLS) that records what it got and
  counts its connections;
- :class:`FlakyUpstream` (answers the first request of each connection, then closes on the
  second without answering) and :class:`StallUpstream` (reads, never answers);
- :func:`make_test_pki`, a test CA and a leaf certificate for ``api.github.test`` / 127.0.0.1,
  made with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import hashlib
import ipaddress
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from valetkey_proxy.exchange import Outcome, Request, Response, Verdict

TOKEN = "a" * 64


def basic(token: str = TOKEN, user: str = "valetkey") -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


@dataclass
class TestRun:
    token: str
    run_id: str = "run_test"


@dataclass
class TestGate:
    """The test gate: authenticates ``TOKEN``, adds ``X-Injected: yes``, blocks ``blocked.test``,
    reroutes hosts in ``routes``, rewrites buffered ``/transform`` responses, serves
    ``/_local``."""

    routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    buffer_limit: int = 1024 * 1024
    #: every forwarded request gets ``buffer_required`` (and ``buffer_response=buffer_limit``)
    require_buffer: bool = False
    authenticated: list[str | None] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    completed: list[tuple[Request, Verdict, Outcome]] = field(default_factory=list)
    locals: list[tuple[Request, str | None]] = field(default_factory=list)

    __test__ = False

    def __post_init__(self) -> None:
        self.run = TestRun(TOKEN)

    def authenticate(self, proxy_authorization: str | None) -> Any | None:
        self.authenticated.append(proxy_authorization)
        return self.run if proxy_authorization == basic() else None

    def on_connect(self, run: Any, host: str, port: int) -> Verdict:
        self.connects.append((host, port))
        if host == "blocked.test":
            return Verdict(
                block="network_policy:strict", block_reason="blocked.test is not allowed"
            )
        return Verdict()

    async def on_request(self, run: Any, request: Request) -> Verdict:
        assert run is self.run
        self.requests.append(request)
        if request.host == "blocked.test":
            return Verdict(
                block="network_policy:strict", block_reason="blocked.test is not allowed"
            )
        if request.target.startswith("/answer"):
            return Verdict(respond=Response(418, [("X-Gate", "answered")], b"from the gate"))
        request.headers.append(("X-Injected", "yes"))
        verdict = Verdict(connect_to=self.routes.get(request.host))
        if request.target.startswith("/transform"):
            verdict.buffer_response = self.buffer_limit
        if self.require_buffer:
            verdict.buffer_response = self.buffer_limit
            verdict.buffer_required = True
        return verdict

    def on_response(
        self, run: Any, request: Request, response: Response, verdict: Verdict
    ) -> Response:
        response.body = response.body.replace(b"secret", b"[scrubbed]")
        response.headers.append(("X-Transformed", "1"))
        return response

    def on_complete(self, run: Any, request: Request, verdict: Verdict, outcome: Outcome) -> None:
        self.completed.append((request, verdict, outcome))

    async def local(self, request: Request, proxy_authorization: str | None) -> Response | None:
        self.locals.append((request, proxy_authorization))
        if request.target.startswith("/_local"):
            return Response(
                200, [("Content-Type", "text/plain")], b"local " + request.target.encode()
            )
        return None


# ---------------------------------------------------------------------- PKI


@dataclass
class TestPKI:
    ca_file: Path
    cert_file: Path
    key_file: Path

    __test__ = False

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_test_pki(folder: Path, names: tuple[str, ...] = ("api.github.test",)) -> TestPKI:
    """A test CA and a leaf for ``names`` plus 127.0.0.1 (what the local HTTPS upstream shows)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "valetkey test upstream CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = TestPKI(folder / "test-ca.pem", folder / "upstream.pem", folder / "upstream-key.pem")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


# ---------------------------------------------------------------------- upstream


def pattern(n: int) -> bytes:
    """``n`` deterministic bytes (for checking big bodies end to end)."""
    block = hashlib.sha256(b"valetkey").digest() * 2048  # 64 KiB
    out = block * (n // len(block) + 1)
    return out[:n]


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class Upstream:
    """A small HTTP/1.1 server (keep-alive, Content-Length and chunked request bodies).

    Routes: ``/echo`` (JSON of what it got), ``/chunked`` (a chunked body), ``/big?n=N``
    (N pattern bytes, Content-Length), ``/bigchunked?n=N`` (chunked), ``/close`` (body
    delimited by closing), ``/transform...`` (a body containing "secret"; ``chunked=1``,
    ``trailer=1`` with a chunked trailer, ``close=1`` delimited by closing), ``/gzip`` (a
    ``Content-Encoding: gzip`` body whatever was asked), ``/nocontent`` (204), ``/hold`` (sets
    ``held``, waits for ``release``, then a short 200); anything else 404."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.seen: list[Seen] = []
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                headers: list[tuple[str, str]] = []
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers.append((k.strip(), v.strip()))
                lower = {k.lower(): v for k, v in headers}
                body = b""
                if "content-length" in lower:
                    body = await reader.readexactly(int(lower["content-length"]))
                elif lower.get("transfer-encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int((await reader.readline()).split(b";")[0], 16)
                        if size == 0:
                            await reader.readline()
                            break
                        parts.append(await reader.readexactly(size))
                        await reader.readline()
                    body = b"".join(parts)
                seen = Seen(method, target, headers, body, conn)
                self.seen.append(seen)
                keep = await self._respond(seen, writer)
                await writer.drain()
                if not keep or lower.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(self, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        path, _, query = seen.target.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if path == "/echo":
            doc = {
                "method": seen.method,
                "target": seen.target,
                "headers": seen.headers,
                "body_sha256": hashlib.sha256(seen.body).hexdigest(),
                "body_len": len(seen.body),
                "conn": seen.conn,
            }
            self._send(
                writer, 200, json.dumps(doc).encode(), [("Content-Type", "application/json")]
            )
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"hello ", b"chunked ", b"world"):
                writer.write(b"%x\r\n%b\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path == "/big":
            self._send(writer, 200, pattern(int(params["n"])), [])
        elif path == "/bigchunked":
            data = pattern(int(params["n"]))
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(data), 100_000):
                part = data[i : i + 100_000]
                writer.write(b"%x\r\n%b\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
            return False
        elif path.startswith("/transform"):
            size = int(params.get("n", "0"))
            body = b'{"token": "secret"}' + b" " * size
            if params.get("close"):
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
                return False
            if params.get("chunked") or params.get("trailer"):
                trailer = b"X-Trailer: from-upstream\r\n" if params.get("trailer") else b""
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"%x\r\n%b\r\n0\r\n%b\r\n" % (len(body), body, trailer))
            else:
                self._send(writer, 200, body, [("Content-Type", "application/json")])
        elif path == "/nocontent":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == "/gzip":
            body = gzip.compress(b'{"token": "secret"}')
            self._send(writer, 200, body, [("Content-Encoding", "gzip")])
        elif path == "/hold":
            self.held.set()
            await self.release.wait()
            self._send(writer, 200, b"released", [])
        else:
            self._send(writer, 404, b"no such route", [])
        return True

    @staticmethod
    def _send(
        writer: asyncio.StreamWriter, status: int, body: bytes, headers: list[tuple[str, str]]
    ) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers)
        writer.write(head.encode() + b"\r\n" + body)


class FlakyUpstream:
    """Answers the first request of every connection (keep-alive), then closes the connection
    when a second request arrives on it, without answering: a stale pooled connection."""

    def __init__(self) -> None:
        #: (method, target, connection number) of every request received
        self.seen: list[tuple[str, str, int]] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> FlakyUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v)
                if length:
                    await reader.readexactly(length)
                self.seen.append((method, target, conn))
                if n == 0:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class StallUpstream:
    """Accepts connections and reads requests but never answers; counts connections and how
    many of them the peer closed."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> StallUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while await reader.read(65536):
                pass
            self.closed += 1
        except ConnectionError:
            self.closed += 1
        finally:
            self._writers.discard(writer)
            writer.close()


async def raw_exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read the answer (until the peer closes, or the
    first complete head when ``until_close`` is False)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if until_close:
            return await asyncio.wait_for(reader.read(), 10)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
