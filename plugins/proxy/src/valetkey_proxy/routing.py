"""Named services of an agent, reachable by name through the proxy port (``/v1/routes/{agent}``).

An agent registers ``{"services": {"web": "http://127.0.0.1:3000"}}`` for itself (say ``tk``);
then ``http://web.tk.localhost:<proxy port>/`` — from a browser on this machine, or from anything
that resolves ``*.localhost`` to loopback as RFC 6761 asks — reaches that service. The route
table lives in the daemon's memory (agents register their routes when they start). Service
names are DNS labels; an agent name may contain dots.

Responses are buffered (the proxy's local endpoints answer whole responses), redirects are
passed back, not followed. No credential is ever added on this path.
"""

from __future__ import annotations

import re
import ssl
from urllib.parse import urlsplit, urlunsplit

import httpx

from .exchange import Request, Response

#: ``<service>.<agent>.localhost``
_ROUTED = re.compile(r"^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.(.+)\.localhost$")
#: request headers not passed on (the rest are)
_DROP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})
#: response headers not passed back (the engine frames the body itself)
_DROP_RESPONSE = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
MAX_BODY = 32 * 1024 * 1024


class RouteTable:
    """Per-agent named services: ``agent → {service name → base URL}`` (in memory)."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, str]] = {}

    def set(self, agent: str, services: dict[str, str]) -> None:
        """Replace ``agent``'s services."""
        self._routes[agent.lower()] = {k.lower(): v for k, v in services.items()}

    def remove(self, agent: str) -> bool:
        """Forget ``agent``; False when it had no routes."""
        return self._routes.pop(agent.lower(), None) is not None

    def get(self, agent: str) -> dict[str, str] | None:
        """``agent``'s services."""
        services = self._routes.get(agent.lower())
        return None if services is None else dict(services)

    def lookup(self, agent: str, service: str) -> str | None:
        """The URL of ``agent``'s ``service``."""
        return self._routes.get(agent.lower(), {}).get(service.lower())

    def agents(self) -> list[str]:
        """Agents with routes."""
        return sorted(self._routes)

    def __len__(self) -> int:
        return len(self._routes)


class ServiceRouter:
    """Answers local requests addressed to ``<service>.<agent>.localhost``."""

    def __init__(self, routes: RouteTable, upstream_ssl: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self._client = httpx.AsyncClient(
            verify=upstream_ssl if upstream_ssl is not None else True,
            timeout=httpx.Timeout(60.0, connect=10.0),
            trust_env=False,
            follow_redirects=False,
        )

    def target(self, host: str) -> str | None:
        """The base URL ``host`` routes to, or None (not a routed name, or no such route)."""
        m = _ROUTED.match(host.lower())
        if m is None:
            return None
        return self.routes.lookup(m.group(2), m.group(1))

    async def forward(self, request: Request, base_url: str) -> Response:
        """Send ``request`` to the service and return its (buffered) answer."""
        parts = urlsplit(base_url)
        path, _, query = request.target.partition("?")
        url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))
        headers = [(k, v) for k, v in request.headers if k.lower() not in _DROP]
        try:
            answer = await self._client.request(
                request.method, url, headers=headers, content=request.body or None
            )
        except httpx.HTTPError as exc:
            message = f"service {parts.netloc} could not be reached: {type(exc).__name__}"
            return Response(502, [("Content-Type", "text/plain")], message.encode() + b"\n")
        if len(answer.content) > MAX_BODY:
            return Response(502, [("Content-Type", "text/plain")], b"service answer too large\n")
        out = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _DROP_RESPONSE]
        return Response(answer.status_code, out, answer.content, answer.reason_phrase)

    async def aclose(self) -> None:
        """Close upstream connections."""
        await self._client.aclose()
