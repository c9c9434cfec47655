"""The relay host's live state: which machines are connected, the requests waiting for their
answers, and each relay's request budget.

- **One live connection per relay**: a machine that connects again supersedes its earlier
  connection (closed with code 4000); requests still waiting on the old one are answered with an
  error at once rather than left to time out.
- **Forwarding**: :meth:`Hub.forward` sends an ``mcp-request`` frame over the relay's connection
  and waits for the ``mcp-response`` with the same ``request_id`` — only from that connection.
- **Rate limit**: a token bucket per relay (``rate`` per second, ``burst`` at once).

All of it lives in memory in the one ``relay host`` process: the host is a single process by
design (a WebSocket is held by the process that accepted it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from valetkey_relay.protocol import McpRequest, McpResponse, error_body

log = logging.getLogger("valetkey.relay_server")

INTERNAL_ERROR = -32603
SUPERSEDED = 4000


class NotConnected(Exception):
    """The relay's machine is not connected."""


class CallTimeout(Exception):
    """The machine did not answer in time."""


@dataclass(eq=False)
class Link:
    """One machine connection: ``send`` writes a text frame, ``close`` ends it."""

    relay_id: str
    send: Callable[[str], Awaitable[None]]
    close: Callable[[int, str], Awaitable[None]]
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.time)

    def fail_pending(self, message: str) -> None:
        """Answer every waiting request with ``message`` (an internal error)."""
        for request_id, future in list(self.pending.items()):
            if not future.done():
                future.set_result(error_body(None, INTERNAL_ERROR, message))
            self.pending.pop(request_id, None)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Hub:
    """Live machine connections and in-flight requests of one relay host."""

    def __init__(self, rate: float = 20.0, burst: int = 40) -> None:
        self.links: dict[str, Link] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._rate, self._burst = rate, burst
        self._ids = itertools.count(1)

    def connected(self, relay_id: str) -> bool:
        """Whether the relay's machine is connected now."""
        return relay_id in self.links

    async def attach(self, link: Link) -> None:
        """Make ``link`` the relay's live connection, superseding an earlier one."""
        old = self.links.get(link.relay_id)
        self.links[link.relay_id] = link
        if old is not None:
            log.info("relay %s: a new machine connection supersedes the old one", link.relay_id)
            old.fail_pending("the machine reconnected while this request was in flight")
            try:
                await old.close(SUPERSEDED, "superseded by a newer connection")
            except Exception as exc:  # the old socket may be gone already
                log.debug("closing a superseded connection: %s", type(exc).__name__)

    def detach(self, link: Link) -> None:
        """Forget ``link`` (if it is still the live one) and fail what waits on it."""
        if self.links.get(link.relay_id) is link:
            del self.links[link.relay_id]
        link.fail_pending("the machine disconnected before answering")

    def resolve(self, link: Link, response: McpResponse) -> bool:
        """Hand an answer to the request waiting for it on ``link``; False if none waits."""
        future = link.pending.pop(response.request_id, None)
        if future is None or future.done():
            return False
        future.set_result(response.body)
        return True

    def admit(self, relay_id: str) -> float:
        """0 when the relay may send a request now, else seconds to wait (rate limit)."""
        bucket = self._buckets.get(relay_id)
        if bucket is None:
            bucket = self._buckets[relay_id] = TokenBucket(self._rate, self._burst)
        return bucket.take()

    async def forward(
        self,
        relay_id: str,
        jsonrpc_id: Any,
        method: str,
        params: dict[str, Any] | None,
        protocol_version: str | None,
        timeout: float,
    ) -> dict[str, Any]:
        """Send one request to the relay's machine and return its JSON-RPC answer body."""
        link = self.links.get(relay_id)
        if link is None:
            raise NotConnected(relay_id)
        request_id = f"r{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        link.pending[request_id] = future
        frame = McpRequest(request_id, jsonrpc_id, method, params, protocol_version).encode()
        try:
            try:
                await link.send(frame)
            except Exception:  # the socket closed under us
                raise NotConnected(relay_id) from None
            body = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CallTimeout(relay_id) from None
        finally:
            link.pending.pop(request_id, None)
        body["id"] = jsonrpc_id
        return body


__all__ = ["CallTimeout", "Hub", "Link", "NotConnected", "TokenBucket"]
