"""The seam between the proxy engine (sockets, HTTP/1.1 framing, TLS interception — ``server.py``)
and what it does with each request (runs, grants, injection, policy, logs — ``gate.py``).

The engine knows nothing about credentials: it parses a request, asks the :class:`Gatekeeper`
what to do, forwards it, and reports how it went. The gate knows nothing about sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Request:
    """One HTTP request an agent sent through the proxy (body buffered)."""

    method: str
    #: ``http`` for a forward-proxied request, ``https`` for one inside an intercepted CONNECT
    scheme: str
    #: lower-case host name or IP, without port or brackets
    host: str
    port: int
    #: origin-form target: ``/path?query``
    target: str
    #: end-to-end headers in order; hop-by-hop headers and Proxy-Authorization already removed
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


@dataclass(slots=True)
class Response:
    """A response the gate answers itself, or a buffered upstream response."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    reason: str = ""


@dataclass(slots=True)
class Verdict:
    """What the gate decided for one request (or one CONNECT)."""

    #: blocked by this rule: the engine answers 407 with ``X-Valetkey-Blocked: <rule>``
    block: str | None = None
    #: why, for the response body (never a secret)
    block_reason: str = ""
    #: answer with this instead of forwarding (e.g. 502 when a grant cannot be resolved)
    respond: Response | None = None
    #: connect here instead of (host, port); TLS name checks still use the request's host
    connect_to: tuple[str, int] | None = None
    #: >0: buffer a response body up to this many bytes and call ``gate.on_response``;
    #: larger (or unknown-length that grows larger) responses stream through untouched
    #: (unless ``buffer_required``)
    buffer_response: int = 0
    #: with ``buffer_response``: never stream a response past the limit (502 instead), and ask
    #: the upstream for an unencoded body — a transformer that must see every byte relies on it.
    #: The engine then sends ``Accept-Encoding: identity`` upstream (replacing the agent's) and
    #: drops ``Range`` / ``If-Range``; a response body larger than ``buffer_response`` bytes (by
    #: its Content-Length, or growing past it when chunked or close-delimited), or one with a
    #: ``Content-Encoding`` other than ``identity``, is never sent on: the agent gets ``502`` with
    #: ``X-Valetkey-Error: response-too-large`` and a short text body, the upstream connection
    #: is closed, ``on_response`` is not called and ``on_complete`` gets status 502 and an
    #: ``error``. Responses without a body (HEAD, 204, 304) pass as usual.
    buffer_required: bool = False
    #: anything the gate wants back in ``on_response`` / ``on_complete``
    context: Any = None


@dataclass(slots=True)
class Outcome:
    """How a request ended, for the per-run request log."""

    status: int
    #: request body bytes sent upstream, response body bytes sent to the agent
    bytes_out: int
    bytes_in: int
    duration_ms: float
    #: an engine-side failure (``upstream connect failed: ...``), never a secret
    error: str | None = None


class Gatekeeper(Protocol):
    """What the engine asks, in this order: ``authenticate`` (once per connection or CONNECT),
    ``on_connect`` (CONNECT only), ``on_request`` (every request), ``on_response`` (only when the
    verdict asked for buffering), ``on_complete`` (every request that got a verdict)."""

    def authenticate(self, proxy_authorization: str | None) -> Any | None:
        """The run a ``Proxy-Authorization`` header value belongs to, or None (the engine answers
        407 with ``Proxy-Authenticate: Basic realm="valetkey"``)."""
        ...

    def on_connect(self, run: Any, host: str, port: int) -> Verdict:
        """Before intercepting a CONNECT tunnel: only ``block`` is looked at."""
        ...

    async def on_request(self, run: Any, request: Request) -> Verdict:
        """Decide, and rewrite ``request`` in place (headers, target, body) before it is sent."""
        ...

    def on_response(
        self, run: Any, request: Request, response: Response, verdict: Verdict
    ) -> Response:
        """Rewrite a buffered upstream response (the engine fixes Content-Length afterwards)."""
        ...

    def on_complete(self, run: Any, request: Request, verdict: Verdict, outcome: Outcome) -> None:
        """Record the request (must not block: the engine calls it on the event loop)."""
        ...

    async def local(self, request: Request, proxy_authorization: str | None) -> Response | None:
        """A request addressed to the proxy itself (origin-form, or absolute-form naming the
        proxy's own address): ``/_aws/credentials``, ``/mcp/{run}/{name}``. None: 404."""
        ...
