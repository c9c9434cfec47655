"""Upstream connections of the proxy engine: a keep-alive pool keyed by ``(host, port, tls, sni)``
and the TLS context upstream servers are verified with.

A pooled :class:`UpstreamConnection` is an asyncio protocol that hands every byte it receives to
its current *sink* (the engine's response handler for the request in flight); between requests it
has none, and a connection that receives anything or closes while idle is dropped. At most
``max_idle_per_key`` idle connections are kept per key and ``max_idle_total`` in all (the oldest
idle one is closed to make room), each for at most ``idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from typing import Protocol, cast

#: idle connections kept per (host, port, tls, sni)
MAX_IDLE_PER_KEY = 64
#: idle connections kept in all
MAX_IDLE_TOTAL = 256
IDLE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 15.0

PoolKey = tuple[str, int, bool, str]


def upstream_ssl_context(extra_ca_file: str | None) -> ssl.SSLContext:
    """Client-side TLS for upstream servers: the system trust store plus ``extra_ca_file`` (a PEM
    bundle, e.g. a test CA), hostname checks on, ALPN ``http/1.1``."""
    ctx = ssl.create_default_context()
    if extra_ca_file:
        ctx.load_verify_locations(cafile=extra_ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Sink(Protocol):
    """Where an upstream connection's bytes go while a request is in flight."""

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_lost(self, exc: Exception | None) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP (or TLS) connection to an upstream server."""

    __slots__ = ("closed", "idle_since", "key", "paused", "pool", "reused", "sink", "transport")

    def __init__(self, pool: UpstreamPool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.sink: Sink | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        #: served a request before this one (a stale keep-alive connection may fail at once)
        self.reused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.upstream_data(data)
        else:  # nothing was asked: a server talking out of turn is not reused
            self.abort()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sink, self.sink = self.sink, None
        self.pool._forget(self)
        if sink is not None:
            sink.upstream_lost(exc)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close at once (the connection is never reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to upstream servers."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        max_idle_per_key: int = MAX_IDLE_PER_KEY,
        max_idle_total: int = MAX_IDLE_TOTAL,
        idle_timeout: float = IDLE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.ssl_context = ssl_context
        self.max_idle_per_key = max_idle_per_key
        self.max_idle_total = max_idle_total
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        #: every idle connection, oldest first (a dict keeps insertion order)
        self._lru: dict[UpstreamConnection, None] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        #: connections opened so far (for tests and stats)
        self.opened = 0

    async def acquire(self, host: str, port: int, *, tls: bool, sni: str) -> UpstreamConnection:
        """An idle connection to (host, port) with the same TLS name, or a new one. Raises
        ``OSError`` / ``ssl.SSLError`` / ``TimeoutError`` when a new one cannot be made."""
        key: PoolKey = (host, port, tls, sni if tls else "")
        idle = self._idle.get(key)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                self._lru.pop(conn, None)
                if conn.closed or now - conn.idle_since > self.idle_timeout:
                    conn.abort()
                    continue
                assert conn.transport is not None
                if conn.transport.is_closing():
                    continue
                conn.reused = True
                return conn
        return await self._connect(key)

    async def _connect(self, key: PoolKey) -> UpstreamConnection:
        host, port, tls, sni = key
        loop = asyncio.get_running_loop()
        if tls:
            coro = loop.create_connection(
                lambda: UpstreamConnection(self, key),
                host,
                port,
                ssl=self.ssl_context,
                server_hostname=sni,
                ssl_handshake_timeout=self.connect_timeout,
            )
        else:
            coro = loop.create_connection(lambda: UpstreamConnection(self, key), host, port)
        async with asyncio.timeout(self.connect_timeout):
            _transport, conn = await coro
        self.opened += 1
        return conn

    def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Back to the pool after a complete exchange, or closed."""
        conn.sink = None
        if not reusable or conn.closed or self._closed:
            conn.abort()
            return
        transport = conn.transport
        if transport is None or transport.is_closing():
            conn.abort()
            return
        conn.resume_reading()  # an idle connection must notice when the server closes it
        idle = self._idle.get(conn.key)
        if len(idle or ()) >= self.max_idle_per_key or self.max_idle_total < 1:
            conn.abort()
            return
        while len(self._lru) >= self.max_idle_total:  # make room: close the oldest idle one
            oldest = next(iter(self._lru))
            self._forget(oldest)
            oldest.abort()
        idle = self._idle.setdefault(conn.key, [])
        conn.idle_since = time.monotonic()
        idle.append(conn)
        self._lru[conn] = None
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def _forget(self, conn: UpstreamConnection) -> None:
        """No longer idle (closed, or evicted)."""
        if conn not in self._lru:
            return
        del self._lru[conn]
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for key in list(self._idle):
            idle = self._idle[key]
            for conn in [c for c in idle if now - c.idle_since > self.idle_timeout]:
                idle.remove(conn)
                self._lru.pop(conn, None)
                conn.abort()
            if not idle:
                del self._idle[key]
        if self._idle and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def idle_count(self) -> int:
        """Idle connections held now."""
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close every idle connection; later releases close theirs."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, {}
        self._lru = {}
        for conns in idle.values():
            for conn in conns:
                conn.abort()
