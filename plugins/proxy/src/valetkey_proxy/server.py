"""The proxy engine: sockets, HTTP/1.1 framing and TLS interception. What to do with each request
is the :class:`~valetkey_proxy.exchange.Gatekeeper`'s business; this module only moves bytes.

One :class:`ClientConnection` (an asyncio protocol fed by an ``httptools`` parser) per agent
connection, one worker coroutine per connection that answers its requests in order:

- **forward proxy**: ``GET http://host:port/path`` → ``Request(scheme="http", ...)``;
- **CONNECT** ``host:port`` → ``gate.on_connect``; accepted tunnels are intercepted: a first byte
  of ``0x16`` starts server-side TLS (an ``ssl.SSLObject`` over memory BIOs, so the peeked bytes
  are not lost) with a leaf certificate for ``host`` from the :class:`~valetkey_proxy.ca.LocalCA`,
  anything else is parsed as plain HTTP; every request inside is for the CONNECT's host and port;
- **local** requests (origin-form, or absolute-form naming the proxy's own address) →
  ``gate.local``.

Auth: the first request of a connection (and every CONNECT) must carry ``Proxy-Authorization``;
the run is cached per connection while the header value stays the same; inside a tunnel the
CONNECT's run applies. Request bodies are buffered (up to ``max_request_body``, else 413; all of
it within ``body_timeout`` of the head, else 408); chunked trailers are dropped;
hop-by-hop headers, ``Host``, ``Expect`` and the body framing headers are removed before the gate
sees the request and re-made when it is sent. While the worker is busy with a request, the
connection stops reading once another whole request is queued or ``max_queued_bytes`` of body
are held, so a pipelining client cannot make the proxy buffer more than that. Responses stream
through (Content-Length kept, chunked re-chunked, close-delimited sent chunked to HTTP/1.1
clients) unless the verdict asks for buffering and the body fits; with ``buffer_required`` a body
that does not fit (or is content-encoded) is answered 502 instead of streamed. An upstream that
sends nothing for ``upstream_timeout`` gets the agent a 504 (or a cut connection once the
response has started). Upstream connections come from a keep-alive pool
(:mod:`~valetkey_proxy.upstream`); a reused one that closes before answering is retried once
for idempotent methods.

Nothing here logs or puts into an error text a header value or a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ipaddress
import logging
import socket
import ssl
import time
from collections import deque
from typing import Any, cast

import httptools

from .ca import LocalCA
from .exchange import Gatekeeper, Outcome, Request, Response, Verdict
from .upstream import UpstreamConnection, UpstreamPool, upstream_ssl_context

log = logging.getLogger("valetkey.proxy.engine")

MAX_REQUEST_BODY = 32 * 1024 * 1024
KEEPALIVE_TIMEOUT = 60.0
HEADER_TIMEOUT = 30.0
UPSTREAM_TIMEOUT = 300.0
#: the whole request body must arrive within this many seconds of the request head
BODY_TIMEOUT = 120.0
#: body bytes of requests not yet being handled (queued, or still arriving) held per connection
#: while the worker is busy, before the connection stops reading
MAX_QUEUED_BYTES = 1024 * 1024

_REQUEST_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "content-length",
        "host",
        "expect",
    }
)
_RESPONSE_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "content-length",
    }
)
#: what the engine sets itself on a whole response it sends
_FRAMING = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: request headers dropped when the gate must see the whole, unencoded response body
_UNSCRUBBABLE = frozenset({"accept-encoding", "range", "if-range"})
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}

_MODE_HTTP = 0  # parsing requests
_MODE_STASH = 1  # CONNECT received: keep bytes until the worker decides
_MODE_PEEK = 2  # tunnel open: the first byte says TLS or plain HTTP
_MODE_DEAD = 3  # ignore whatever comes (after a parse error or an upgrade)


#: methods retried once on a fresh upstream connection when a reused one closes unanswered
#: (RFC 9110 9.2.2: a POST the server may have acted on is never sent twice)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def _encode_head(lines: list[str]) -> bytes:
    text = "".join(lines)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _header_lines(headers: list[tuple[str, str]]) -> list[str]:
    lines = [f"{k}: {v}\r\n" for k, v in headers]
    block = "".join(lines)
    if block.count("\n") != len(lines) or block.count("\r") != len(lines):
        # a value with a line break (from a gate or a transformer): never split the head on it
        lines = [
            f"{k}: {v}\r\n"
            for k, v in headers
            if not any(c in k or c in v for c in "\r\n\0") and ":" not in k
        ]
    return lines


def _split_authority(authority: str) -> tuple[str, int] | None:
    """``host:port`` / ``[v6]:port`` → (host, port), or None."""
    host, sep, port_text = authority.rpartition(":")
    if not sep or not port_text.isdigit():
        return None
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not 0 < port < 65536 or any(c in host for c in "/@ \t"):
        return None
    return host.lower(), port


class _Message:
    """A request as the client sent it (being parsed, or queued for the worker)."""

    __slots__ = (
        "body",
        "body_since",
        "error",
        "expect_continue",
        "headers",
        "headers_done",
        "keep_alive",
        "method",
        "started",
        "too_large",
        "unauthenticated",
        "url",
        "version",
    )

    def __init__(self, started: float) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True
        self.expect_continue = False
        self.too_large = False
        self.unauthenticated = False
        self.headers_done = False
        self.error = ""
        self.started = started
        #: when the head was complete (moved on by the time reading was paused by the proxy)
        self.body_since = started


class _Result:
    """How a forwarded exchange ended."""

    __slots__ = (
        "bytes_in",
        "client_keep",
        "error",
        "fail_kind",
        "fail_status",
        "head_sent",
        "retryable",
        "status",
    )

    def __init__(self) -> None:
        self.status = 0
        self.bytes_in = 0
        self.error: str | None = None
        self.head_sent = False
        self.client_keep = True
        self.retryable = False
        #: what the agent gets when it failed before the head was sent: status, X-Valetkey-Error
        self.fail_status = 502
        self.fail_kind = "upstream"


class _Exchange:
    """The sink of one upstream response: parses it and streams (or buffers) it to the client."""

    __slots__ = (
        "buf",
        "chunking",
        "client",
        "close_delimited",
        "conn",
        "done",
        "finished",
        "gate_run",
        "headers",
        "interim",
        "is_head",
        "keep_upstream",
        "last",
        "length",
        "limit",
        "message",
        "parser",
        "reason",
        "request",
        "required",
        "result",
        "status",
        "streaming",
        "verdict",
    )

    def __init__(
        self,
        client: ClientConnection,
        conn: UpstreamConnection,
        request: Request,
        verdict: Verdict,
        message: _Message,
        run: Any,
    ) -> None:
        self.client = client
        self.conn = conn
        self.request = request
        self.verdict = verdict
        self.message = message
        self.gate_run = run
        self.parser = httptools.HttpResponseParser(self)
        self.is_head = request.method == "HEAD"
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None
        self.interim = False
        self.close_delimited = False
        self.streaming = False
        self.chunking = False
        self.limit = verdict.buffer_response
        self.required = verdict.buffer_required
        self.buf = bytearray()
        #: when the upstream last sent something (or the request was sent)
        self.last = time.monotonic()
        self.keep_upstream = False
        self.finished = False
        self.result = _Result()
        self.done: asyncio.Future[None] = client.loop.create_future()

    # ------------------------------------------------------------------ upstream side

    def upstream_data(self, data: bytes) -> None:
        if self.finished:  # bytes after a HEAD response or after the end: not reusable
            self.keep_upstream = False
            self.conn.abort()
            return
        self.last = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("upstream sent a malformed response")
        except Exception as exc:  # an error raised in a callback (gate.on_response)
            log.error("proxy engine: response handling failed: %s", type(exc).__name__)
            self._fail("response handling failed")

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        if self.status and self.close_delimited and not self.interim:
            self._complete()  # the end of a close-delimited body
            return
        if not self.status:
            self.result.retryable = not self.result.head_sent
            self._fail("upstream closed the connection before responding")
        else:
            self._fail("upstream closed the connection mid-response")

    def timed_out(self) -> None:
        """Nothing from the upstream for ``upstream_timeout``: 504 if nothing was sent yet."""
        if self.finished:
            return
        self.result.fail_status = 504
        self.result.fail_kind = "timeout"
        self._fail("upstream timed out")

    # ------------------------------------------------------------------ parser callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.status:  # after the final head: chunked trailers, dropped
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise httptools.HttpParserError("unexpected protocol switch")
            self.interim = True  # 100 Continue and friends: the real response follows
            self.headers = []
            self.reason = ""
            return
        self.status = status
        self.keep_upstream = self.parser.should_keep_alive()
        headers: list[tuple[str, str]] = []
        chunked = False
        length: int | None = None
        connection_tokens: set[str] | None = None
        for key, value in self.headers:
            lk = key.lower()
            if lk in _RESPONSE_DROP:
                if lk == "content-length":
                    with contextlib.suppress(ValueError):
                        length = int(value.strip())
                elif lk == "transfer-encoding":
                    chunked = "chunked" in value.lower()
                elif lk == "connection":
                    connection_tokens = connection_tokens or set()
                    connection_tokens.update(t.strip().lower() for t in value.split(","))
                continue
            headers.append((key, value))
        if connection_tokens:
            headers = [(k, v) for k, v in headers if k.lower() not in connection_tokens]
        self.headers = headers
        self.length = None if chunked else length
        no_body = self.is_head or status in (204, 304)
        if no_body:
            if length is not None and status != 204:
                headers.append(("Content-Length", str(length)))
            self._send_head(framing=False)
            if self.is_head:
                self._complete()
            return
        self.close_delimited = not chunked and length is None
        if self.required:
            if self.length is not None and self.length > self.limit:
                self._too_large()
            elif self.length != 0 and any(
                token.strip().lower() not in ("", "identity")
                for k, v in headers
                if k.lower() == "content-encoding"
                for token in v.split(",")
            ):
                self._refuse("upstream response is content-encoded: it cannot be scrubbed")
            return  # buffer
        if self.limit > 0 and (self.length is None or self.length <= self.limit):
            return  # buffer
        self._start_stream()

    def on_body(self, body: bytes) -> None:
        if self.interim or self.finished:
            return
        if not self.streaming:
            self.buf += body
            if len(self.buf) > self.limit:  # grew past the limit: what we have, then the rest
                if self.required:
                    self._too_large()
                    return
                data, self.buf = bytes(self.buf), bytearray()
                self._start_stream()
                self._stream(data)
            return
        self._stream(body)

    def _too_large(self) -> None:
        self._refuse(f"response too large to scrub (more than {self.limit} bytes)")

    def _refuse(self, error: str) -> None:
        """A body the gate must see but cannot: never sent on; 502, upstream closed."""
        self.buf = bytearray()
        self.result.fail_kind = "response-too-large"
        self._fail(error)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.finished:
            return
        self._complete()

    # ------------------------------------------------------------------ to the client

    def _send_head(self, *, framing: bool) -> None:
        msg = self.message
        lines = [f"HTTP/1.1 {self.status} {self.reason or _reason(self.status)}\r\n"]
        lines += _header_lines(self.headers)
        if framing:
            if self.length is not None:
                lines.append(f"Content-Length: {self.length}\r\n")
            elif msg.version == "1.1":
                self.chunking = True
                lines.append("Transfer-Encoding: chunked\r\n")
            else:  # an HTTP/1.0 client: the end of the body is the end of the connection
                self.result.client_keep = False
        keep = self.result.client_keep and msg.keep_alive
        if not keep:
            self.result.client_keep = False
            lines.append("Connection: close\r\n")
        elif msg.version != "1.1":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        self.client.send(_encode_head(lines))
        self.result.head_sent = True
        self.result.status = self.status

    def _start_stream(self) -> None:
        self.streaming = True
        self._send_head(framing=True)

    def _stream(self, data: bytes) -> None:
        if not data:
            return
        self.result.bytes_in += len(data)
        if self.chunking:
            self.client.send(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.client.send(data)

    def _complete(self) -> None:
        if self.streaming:
            if self.chunking:
                self.client.send(b"0\r\n\r\n")
        elif not self.result.head_sent:  # buffered: let the gate rewrite it
            response = Response(self.status, self.headers, bytes(self.buf), self.reason)
            self.buf = bytearray()
            try:
                response = self.client.gate.on_response(
                    self.gate_run, self.request, response, self.verdict
                )
            except Exception as exc:
                log.error("proxy engine: gate.on_response failed: %s", type(exc).__name__)
                self._fail("response rewrite failed")
                return
            self.status = response.status
            self.reason = response.reason or _reason(response.status)
            self.headers = [(k, v) for k, v in response.headers if k.lower() not in _RESPONSE_DROP]
            self.length = len(response.body)
            self._send_head(framing=True)
            if response.body:
                self.result.bytes_in += len(response.body)
                self.client.send(response.body)
        if self.close_delimited:
            self.keep_upstream = False
        self._finish()

    def _fail(self, error: str) -> None:
        if self.finished:
            return
        self.result.error = error
        self.keep_upstream = False
        if self.result.head_sent:
            self.result.client_keep = False  # the framing is broken: the client must see it
        self.conn.abort()
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        if not self.done.done():
            self.done.set_result(None)


class ClientConnection(asyncio.Protocol):
    """One agent connection: parsing, auth, tunnels and the worker that answers requests."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.gate: Gatekeeper = server.gate
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.mode = _MODE_HTTP
        self.msg: _Message | None = None
        self.queue: deque[_Message] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.eof = False
        self.busy = False
        self.last = time.monotonic()
        self.read_paused = False
        self.paused_at = 0.0
        self.write_paused = False
        self.continue_pending: _Message | None = None
        #: bytes read from the agent (TLS records included)
        self.received = 0
        #: body bytes of requests the worker has not taken yet (queued or still arriving)
        self.queued_bytes = 0
        self.max_queued_bytes = server.max_queued_bytes
        self.stash = bytearray()
        # tunnel
        self.tunnel: tuple[str, str, int] | None = None
        self.tunnel_target: tuple[str, int] | None = None
        self.tunnel_run: Any = None
        self.tls: ssl.SSLObject | None = None
        self.tls_in: ssl.MemoryBIO | None = None
        self.tls_out: ssl.MemoryBIO | None = None
        self.handshaken = False
        # auth cache (plain HTTP keep-alive)
        self.auth_value: str | None = None
        self.auth_run: Any = None
        self.upstream: UpstreamConnection | None = None
        self.exchange: _Exchange | None = None
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        self.task = self.loop.create_task(self._worker())

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.received += len(data)
        mode = self.mode
        if mode == _MODE_HTTP:
            if self.tls is not None:
                self._tls_received(data)
            else:
                self._feed(data)
        elif mode == _MODE_STASH:
            self.stash += data
        elif mode == _MODE_PEEK:
            self._peeked(data)

    def eof_received(self) -> bool | None:
        if self.busy or self.queue:
            self.eof = True  # answer what was asked, then close
            self._wake()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.upstream is not None:
            self.upstream.abort()
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    # ------------------------------------------------------------------ bytes in

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            msg = self.msg
            if msg is not None:  # not completed by the parser: complete it here
                self.on_message_complete()
            last = self.queue[-1] if self.queue else None
            if last is not None and last.method == "CONNECT" and self.tunnel is None:
                self.mode = _MODE_STASH
                self.stash = bytearray(data[exc.args[0] :])
                self._pause_reading()
            else:  # an Upgrade (websocket) request: answered, then the connection closes
                self.mode = _MODE_DEAD
                if last is not None:
                    last.keep_alive = False
        except httptools.HttpParserError:
            if self.mode == _MODE_DEAD:  # stopped on purpose (a refused 100-continue body)
                return
            bad = self.msg or _Message(self.last)
            self.msg = None
            bad.error = "malformed request"
            self.queue.append(bad)
            self.mode = _MODE_DEAD
            self._wake()

    def _tls_received(self, data: bytes) -> None:
        tls, tls_in = self.tls, self.tls_in
        assert tls is not None
        assert tls_in is not None
        tls_in.write(data)
        if not self.handshaken:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._tls_flush()
                return
            except (ssl.SSLError, OSError) as exc:
                self._tls_flush()
                log.debug("proxy engine: client TLS handshake failed: %s", type(exc).__name__)
                self.abort()
                return
            self.handshaken = True
            self._tls_flush()
        while self.mode == _MODE_HTTP and not self.closed:
            try:
                chunk = tls.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                if not self.eof_received():
                    self.close()
                break
            except (ssl.SSLError, OSError):
                self.abort()
                return
            if not chunk:
                break
            self._feed(chunk)
        self._tls_flush()

    def _tls_flush(self) -> None:
        out = self.tls_out
        if out is not None and out.pending and self.transport is not None and not self.closed:
            self.transport.write(out.read())

    def _peeked(self, data: bytes) -> None:
        assert self.tunnel_target is not None
        host, port = self.tunnel_target
        if data[:1] == b"\x16":
            try:
                ctx = self.server.ca.server_context(host)
            except Exception as exc:
                log.error("proxy engine: no certificate for a host: %s", type(exc).__name__)
                self.abort()
                return
            self.tls_in, self.tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = ctx.wrap_bio(self.tls_in, self.tls_out, server_side=True)
            self.tunnel = ("https", host, port)
            self.mode = _MODE_HTTP
            self._tls_received(data)
        else:
            self.tunnel = ("http", host, port)
            self.mode = _MODE_HTTP
            self._feed(data)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self.msg = _Message(self.last)

    def on_url(self, url: bytes) -> None:
        assert self.msg is not None
        self.msg.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self.msg
        assert msg is not None
        if not msg.headers_done:  # after the head: chunked trailers, dropped (bodies re-framed)
            msg.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        msg = self.msg
        assert msg is not None
        parser = self.parser
        msg.method = parser.get_method().decode("latin-1")
        msg.version = parser.get_http_version()
        msg.keep_alive = parser.should_keep_alive()
        msg.headers_done = True
        msg.body_since = self.last
        limit = self.server.max_request_body
        for key, value in msg.headers:
            lk = key.lower()
            if lk == "content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > limit:
                        msg.too_large = True
            elif lk == "expect" and value.strip().lower() == "100-continue":
                msg.expect_continue = True
        if msg.expect_continue:
            if not msg.too_large and self._refuse_before_body(msg):
                msg.unauthenticated = True
            if msg.too_large or msg.unauthenticated:  # answer now, not after a body we refuse
                msg.keep_alive = False
                self.msg = None
                self.queue.append(msg)
                self.mode = _MODE_DEAD
                self._wake()
                raise httptools.HttpParserError("stop")  # caught in _feed: nothing more parsed
            if not self.busy and not self.queue:
                self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:
                self.continue_pending = msg

    def _refuse_before_body(self, msg: _Message) -> bool:
        """A forward-proxied request that asks ``100-continue`` without a valid run token is
        answered 407 before its body is read (inside a tunnel the CONNECT was authenticated;
        origin-form requests go to the local endpoints, which check their own header)."""
        if self.tunnel is not None or msg.method == "CONNECT" or msg.url.startswith(b"/"):
            return False
        auth = next((v for k, v in msg.headers if k.lower() == "proxy-authorization"), None)
        if auth is not None and auth == self.auth_value and self.auth_run is not None:
            return False
        return self.gate.authenticate(auth) is None

    def on_body(self, body: bytes) -> None:
        msg = self.msg
        assert msg is not None
        if msg.too_large:
            return
        if len(msg.body) + len(body) > self.server.max_request_body:
            msg.too_large = True
            self.queued_bytes -= len(msg.body)
            msg.body = bytearray()
            return
        msg.body += body
        self.queued_bytes += len(body)
        if self.queued_bytes > self.max_queued_bytes and (self.busy or self.queue):
            self._pause_reading()  # the worker is busy: do not hold more than that

    def on_message_complete(self) -> None:
        msg = self.msg
        if msg is None:
            return
        self.msg = None
        if self.continue_pending is msg:
            self.continue_pending = None
        self.queue.append(msg)
        if self.busy or len(self.queue) > 1:
            self._pause_reading()  # pipelined: read on when the worker takes it
        self._wake()

    # ------------------------------------------------------------------ bytes out

    def send(self, data: bytes) -> None:
        """Write to the agent (through the tunnel's TLS when there is one)."""
        if self.closed or self.transport is None:
            return
        tls = self.tls
        if tls is None:
            self.transport.write(data)
            return
        try:
            tls.write(data)
        except (ssl.SSLError, OSError):
            self.abort()
            return
        self._tls_flush()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.paused_at = time.monotonic()
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            msg = self.msg
            if msg is not None and msg.headers_done:  # paused by us: not the agent's time
                msg.body_since += time.monotonic() - self.paused_at
            self.transport.resume_reading()

    def body_timed_out(self) -> None:
        """A request body still incomplete ``body_timeout`` after its head: 408, close."""
        msg, self.msg = self.msg, None
        self.mode = _MODE_DEAD
        self.respond_text(
            408,
            "valetkey proxy: request body not received in time\n",
            keep=False,
            version=msg.version if msg is not None else "1.1",
        )
        self.close()

    def close(self) -> None:
        """Close after what was written has been sent."""
        if self.transport is not None and not self.closed:
            if self.tls is not None and self.handshaken:
                with contextlib.suppress(ssl.SSLError, OSError):
                    self.tls.unwrap()
                self._tls_flush()
            self.transport.close()
        self.closed = True
        self._wake()

    def abort(self) -> None:
        """Close at once."""
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def respond(
        self,
        status: int,
        body: bytes,
        *,
        headers: list[tuple[str, str]] | None = None,
        keep: bool = True,
        reason: str = "",
        version: str = "1.1",
    ) -> None:
        """A whole response with a Content-Length."""
        lines = [f"HTTP/1.1 {status} {reason or _reason(status)}\r\n"]
        if headers:
            lines += _header_lines([(k, v) for k, v in headers if k.lower() not in _FRAMING])
        lines.append(f"Content-Length: {len(body)}\r\n")
        if not keep:
            lines.append("Connection: close\r\n")
        elif version != "1.1":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        head = _encode_head(lines)
        self.send(head + body if len(body) < 65536 else head)
        if body and len(body) >= 65536:
            self.send(body)

    def respond_text(
        self,
        status: int,
        text: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        keep: bool = True,
        version: str = "1.1",
    ) -> None:
        """A short text/plain response."""
        hdrs = [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])]
        self.respond(status, text.encode(), headers=hdrs, keep=keep, version=version)

    # ------------------------------------------------------------------ the worker

    async def _worker(self) -> None:
        try:
            while True:
                if not self.queue:
                    if self.closed:
                        return
                    if self.eof:
                        self.close()
                        return
                    if self.read_paused and self.mode == _MODE_HTTP:
                        self._resume_reading()
                    pending = self.continue_pending
                    if pending is not None and self.msg is pending:
                        self.continue_pending = None
                        pending.body_since = time.monotonic()  # the body was not asked before
                        self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.waiter = self.loop.create_future()
                    await self.waiter
                    self.waiter = None
                    continue
                msg = self.queue.popleft()
                self.queued_bytes -= len(msg.body)
                if (
                    self.read_paused
                    and self.mode == _MODE_HTTP
                    and not self.queue
                    and self.queued_bytes <= self.max_queued_bytes
                ):
                    self._resume_reading()
                self.busy = True
                try:
                    keep = await self._handle(msg)
                finally:
                    self.busy = False
                    self.last = time.monotonic()
                if self.closed:
                    return
                if not keep:
                    self.close()
                    return
        except Exception as exc:
            log.error("proxy engine: connection failed: %s", type(exc).__name__)
            self.abort()

    async def _handle(self, msg: _Message) -> bool:
        version = msg.version
        if msg.error:
            self.respond_text(400, "valetkey proxy: malformed request\n", keep=False)
            return False
        if msg.unauthenticated:
            self._proxy_auth_required(version, keep=False)
            return False
        if msg.too_large:
            limit = self.server.max_request_body
            self.respond_text(
                413,
                f"valetkey proxy: request body larger than {limit} bytes\n",
                keep=False,
            )
            return False
        url = msg.url.decode("latin-1")
        tunnel = self.tunnel
        if tunnel is not None:
            if msg.method == "CONNECT":
                self.respond_text(400, "valetkey proxy: CONNECT inside a tunnel\n", keep=False)
                return False
            scheme, host, port = tunnel
            if not url.startswith("/") and url != "*":
                parsed = self._absolute(msg.url)
                if parsed is None:
                    self.respond_text(400, "valetkey proxy: bad request target\n", keep=False)
                    return False
                url = parsed[3]
            headers, auth = _clean_request(msg.headers)
            request = Request(msg.method, scheme, host, port, url, headers, bytes(msg.body))
            return await self._decide(self.tunnel_run, request, msg)
        if msg.method == "CONNECT":
            return await self._connect(msg)
        if url.startswith("/"):
            return await self._local(msg, url)
        parsed = self._absolute(msg.url)
        if parsed is None:
            self.respond_text(400, "valetkey proxy: bad request target\n", keep=False)
            return False
        scheme, host, port, target = parsed
        if port == self.server.port and host in self.server.local_names:
            return await self._local(msg, target)
        headers, auth = _clean_request(msg.headers)
        if auth is not None and auth == self.auth_value and self.auth_run is not None:
            run = self.auth_run
        else:
            run = self.gate.authenticate(auth)
            self.auth_value, self.auth_run = (auth, run) if run is not None else (None, None)
        if run is None:
            self._proxy_auth_required(version, keep=msg.keep_alive)
            return msg.keep_alive
        request = Request(msg.method, scheme, host, port, target, headers, bytes(msg.body))
        return await self._decide(run, request, msg)

    def _absolute(self, url: bytes) -> tuple[str, str, int, str] | None:
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return None
        scheme = (parsed.schema or b"").decode("latin-1").lower()
        if scheme not in ("http", "https") or not parsed.host:
            return None
        host = parsed.host.decode("latin-1").lower()
        if any(c in host for c in "/@ \t"):
            return None
        port = parsed.port or (443 if scheme == "https" else 80)
        target = (parsed.path or b"/").decode("latin-1")
        if parsed.query is not None:
            target += "?" + parsed.query.decode("latin-1")
        return scheme, host, port, target

    def _proxy_auth_required(self, version: str, *, keep: bool) -> None:
        self.respond_text(
            407,
            "valetkey proxy: Proxy-Authorization with a run token is required\n",
            headers=[("Proxy-Authenticate", 'Basic realm="valetkey"')],
            keep=keep,
            version=version,
        )

    async def _local(self, msg: _Message, target: str) -> bool:
        headers, auth = _clean_request(msg.headers)
        server = self.server
        # the name the client addressed (``web.agent.localhost``): local endpoints route on it
        named = next((v for k, v in msg.headers if k.lower() == "host"), "")
        authority = _split_authority(named) if named else None
        host = authority[0] if authority else (named.strip().lower() or server.host)
        request = Request(msg.method, "http", host, server.port, target, headers, bytes(msg.body))
        try:
            response = await self.gate.local(request, auth)
        except Exception as exc:
            log.error("proxy engine: local request failed: %s", type(exc).__name__)
            self.respond_text(500, "valetkey proxy: internal error\n", keep=False)
            return False
        if response is None:
            self.respond_text(404, "valetkey proxy: not found\n", keep=msg.keep_alive)
            return msg.keep_alive
        body = b"" if msg.method == "HEAD" else response.body
        self.respond(
            response.status,
            body,
            headers=response.headers,
            keep=msg.keep_alive,
            reason=response.reason,
            version=msg.version,
        )
        return msg.keep_alive

    async def _connect(self, msg: _Message) -> bool:
        target = _split_authority(msg.url.decode("latin-1"))
        if target is None:
            self.respond_text(400, "valetkey proxy: CONNECT needs host:port\n", keep=False)
            return False
        host, port = target
        _headers, auth = _clean_request(msg.headers)
        run = self.gate.authenticate(auth)
        if run is None:
            self._proxy_auth_required(msg.version, keep=False)
            return False
        started = time.monotonic()
        verdict = self.gate.on_connect(run, host, port)
        if verdict.block:
            self._blocked(verdict, keep=False, version=msg.version)
            request = Request("CONNECT", "https", host, port, f"{host}:{port}", [])
            self._complete(run, request, verdict, 407, 0, 0, started, None)
            return False
        self.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.tunnel_target = (host, port)
        self.tunnel_run = run
        self.parser = httptools.HttpRequestParser(self)
        self.mode = _MODE_PEEK
        stash, self.stash = bytes(self.stash), bytearray()
        if stash:
            self._peeked(stash)
        self._resume_reading()
        return True

    def _blocked(self, verdict: Verdict, *, keep: bool, version: str) -> None:
        self.respond_text(
            407,
            (verdict.block_reason or f"blocked by {verdict.block}") + "\n",
            headers=[("X-Valetkey-Blocked", verdict.block or "")],
            keep=keep,
            version=version,
        )

    def _complete(
        self,
        run: Any,
        request: Request,
        verdict: Verdict,
        status: int,
        bytes_out: int,
        bytes_in: int,
        started: float,
        error: str | None,
    ) -> None:
        outcome = Outcome(status, bytes_out, bytes_in, (time.monotonic() - started) * 1000.0, error)
        try:
            self.gate.on_complete(run, request, verdict, outcome)
        except Exception as exc:
            log.error("proxy engine: gate.on_complete failed: %s", type(exc).__name__)

    async def _decide(self, run: Any, request: Request, msg: _Message) -> bool:
        started = time.monotonic()
        try:
            verdict = await self.gate.on_request(run, request)
        except Exception as exc:
            log.error("proxy engine: gate.on_request failed: %s", type(exc).__name__)
            self.respond_text(500, "valetkey proxy: internal error\n", keep=False)
            return False
        keep = msg.keep_alive
        if verdict.block:
            self._blocked(verdict, keep=keep, version=msg.version)
            self._complete(run, request, verdict, 407, 0, 0, started, None)
            return keep
        if verdict.respond is not None:
            response = verdict.respond
            body = b"" if request.method == "HEAD" else response.body
            self.respond(
                response.status,
                body,
                headers=response.headers,
                keep=keep,
                reason=response.reason,
                version=msg.version,
            )
            self._complete(run, request, verdict, response.status, 0, len(body), started, None)
            return keep
        return await self._forward(run, request, verdict, msg, started)

    async def _forward(
        self, run: Any, request: Request, verdict: Verdict, msg: _Message, started: float
    ) -> bool:
        dest_host, dest_port = verdict.connect_to or (request.host, request.port)
        tls = request.scheme == "https"
        payload = _serialize_request(request, msg, identity=verdict.buffer_required)
        pool = self.server.pool
        result = _Result()
        for attempt in (0, 1):
            try:
                conn = await pool.acquire(dest_host, dest_port, tls=tls, sni=request.host)
            except ssl.SSLCertVerificationError as exc:
                reason = f"upstream certificate not trusted: {exc.verify_message}"
                return self._bad_gateway(run, request, verdict, msg, started, reason, "tls")
            except ssl.SSLError as exc:
                reason = f"upstream TLS failed: {exc.reason or type(exc).__name__}"
                return self._bad_gateway(run, request, verdict, msg, started, reason, "tls")
            except TimeoutError:
                reason = "upstream connect timed out"
                return self._bad_gateway(run, request, verdict, msg, started, reason, "connect")
            except OSError as exc:
                reason = f"upstream connect failed: {exc.strerror or type(exc).__name__}"
                return self._bad_gateway(run, request, verdict, msg, started, reason, "connect")
            exchange = _Exchange(self, conn, request, verdict, msg, run)
            conn.sink = exchange
            self.upstream = conn
            self.exchange = exchange
            if self.write_paused:
                conn.pause_reading()
            conn.write(payload)
            try:
                await exchange.done
            finally:
                self.upstream = None
                self.exchange = None
            result = exchange.result
            pool.release(conn, reusable=exchange.keep_upstream and not self.closed)
            if (
                result.retryable
                and conn.reused
                and attempt == 0
                and not self.closed
                and request.method in _IDEMPOTENT
            ):
                continue
            break
        if not result.head_sent:
            return self._bad_gateway(
                run,
                request,
                verdict,
                msg,
                started,
                result.error or "no response",
                result.fail_kind,
                result.fail_status,
            )
        self._complete(
            run,
            request,
            verdict,
            result.status,
            len(request.body),
            result.bytes_in,
            started,
            result.error,
        )
        if result.error is not None:
            self.abort()
            return False
        return result.client_keep and msg.keep_alive

    def _bad_gateway(
        self,
        run: Any,
        request: Request,
        verdict: Verdict,
        msg: _Message,
        started: float,
        reason: str,
        kind: str,
        status: int = 502,
    ) -> bool:
        dest_host, dest_port = verdict.connect_to or (request.host, request.port)
        where = f"{request.host}:{request.port}"
        if (dest_host, dest_port) != (request.host, request.port):
            where += f" (via {dest_host}:{dest_port})"
        self.respond_text(
            status,
            f"valetkey proxy: {where}: {reason}\n",
            headers=[("X-Valetkey-Error", kind)],
            keep=msg.keep_alive,
            version=msg.version,
        )
        self._complete(run, request, verdict, status, 0, 0, started, reason)
        return msg.keep_alive


def _clean_request(raw: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str | None]:
    """End-to-end headers, and the Proxy-Authorization value."""
    headers: list[tuple[str, str]] = []
    auth: str | None = None
    connection_tokens: set[str] | None = None
    for key, value in raw:
        lk = key.lower()
        if lk in _REQUEST_DROP:
            if lk == "proxy-authorization":
                if auth is None:
                    auth = value
            elif lk == "connection":
                connection_tokens = connection_tokens or set()
                connection_tokens.update(t.strip().lower() for t in value.split(","))
            continue
        headers.append((key, value))
    if connection_tokens:
        headers = [(k, v) for k, v in headers if k.lower() not in connection_tokens]
    return headers, auth


def _serialize_request(request: Request, msg: _Message, *, identity: bool = False) -> bytes:
    """The request head (and body) for the upstream; ``identity``: ask for the whole body,
    unencoded (``Accept-Encoding: identity``, no ``Range`` / ``If-Range``)."""
    host, port = request.host, request.port
    default = 443 if request.scheme == "https" else 80
    authority = f"[{host}]" if ":" in host else host
    if port != default:
        authority = f"{authority}:{port}"
    lines = [f"{request.method} {request.target or '/'} HTTP/1.1\r\nHost: {authority}\r\n"]
    headers = request.headers
    if identity:
        headers = [(k, v) for k, v in headers if k.lower() not in _UNSCRUBBABLE]
        headers.append(("Accept-Encoding", "identity"))
    lines += _header_lines(headers)
    body = request.body
    if body or request.method in _BODY_METHODS or msg.body:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    head = _encode_head(lines)
    return head + body if body else head


def _listen_names(host: str) -> frozenset[str]:
    names = {host.lower().strip("[]")}
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        addr = None
    if host in ("localhost", "") or (
        addr is not None and (addr.is_loopback or addr.is_unspecified)
    ):
        names |= {"127.0.0.1", "localhost", "::1"}
    return frozenset(names)


class ProxyServer:
    """The proxy's listening socket and its connections."""

    def __init__(
        self,
        gate: Gatekeeper,
        ca: LocalCA,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_ssl: ssl.SSLContext | None = None,
        max_request_body: int = MAX_REQUEST_BODY,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        header_timeout: float = HEADER_TIMEOUT,
        upstream_timeout: float = UPSTREAM_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.gate = gate
        self.ca = ca
        self.host = host
        self._port = port
        self.max_request_body = max_request_body
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.upstream_timeout = upstream_timeout
        self.body_timeout = body_timeout
        self.max_queued_bytes = max_queued_bytes
        self.pool = UpstreamPool(upstream_ssl or upstream_ssl_context(None))
        self.connections: set[ClientConnection] = set()
        self.local_names = _listen_names(host)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one once started with port 0)."""
        return self._port

    async def start(self) -> None:
        """Listen (the port is known afterwards)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), self.host, self._port, backlog=1024
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    @property
    def _sweep_every(self) -> float:
        shortest = min(
            self.header_timeout, self.keepalive_timeout, self.body_timeout, self.upstream_timeout
        )
        return max(0.05, min(5.0, shortest / 4))

    def _sweep(self) -> None:
        """Close idle keep-alive connections, slow header and body senders, and time out stalled
        upstreams."""
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.closed:
                continue
            quiet = now - conn.last
            msg = conn.msg
            if conn.busy:
                exchange = conn.exchange
                if exchange is not None:
                    if now - exchange.last > self.upstream_timeout:
                        exchange.timed_out()
                elif quiet > self.upstream_timeout:
                    conn.abort()
            elif msg is not None and not msg.headers_done:
                if now - msg.started > self.header_timeout:
                    conn.abort()
            elif conn.mode == _MODE_PEEK or (conn.tls is not None and not conn.handshaken):
                if quiet > self.header_timeout:
                    conn.abort()
            elif (
                msg is not None
                and not conn.queue
                and not conn.read_paused
                and now - msg.body_since > self.body_timeout
            ):
                conn.body_timed_out()
            elif not conn.queue and quiet > self.keepalive_timeout:
                conn.close()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    async def close(self) -> None:
        """Stop accepting, close every connection and the upstream pool."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = [c.task for c in list(self.connections) if c.task is not None]
        for conn in list(self.connections):
            conn.abort()
        self.pool.close()
        if server is not None:
            await server.wait_closed()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
