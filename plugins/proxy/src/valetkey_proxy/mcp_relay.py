"""Remote MCP servers for a run at ``/mcp/{run_id}/{name}[/...]``, with their credential added.

A run lists MCP servers in ``RunSpec.mcp_servers`` (name, url, grant). Its agent is configured
with ``http://<proxy>/mcp/<run id>/<name>`` and its run token as ``Authorization: Bearer …``; it
never holds the server's credential. Each request is relayed to the server's url (a path after
``{name}`` is appended to the url's path, the query is kept) with:

- only the headers the MCP streamable-HTTP transport needs: ``Content-Type``, ``Accept``,
  ``Mcp-Session-Id``, ``Mcp-Protocol-Version``, ``Last-Event-Id`` (the agent's ``Authorization``,
  which carries the run token, is dropped);
- the grant's credential injected the way the gate injects on a bound host (the connector's
  header and format, its added headers, its removed headers), vended from the broker on every
  request so a refreshed token is used at once.

The answer is the upstream's status, body and ``Content-Type`` / ``Mcp-Session-Id`` headers; any
occurrence of the injected values in it is replaced by ``[REDACTED]``. Responses are buffered
(the engine's local endpoints return a whole response), so ``POST`` answers — JSON, or an SSE
stream that ends with the response — work, while the standalone ``GET`` SSE stream is answered
with ``405 Method Not Allowed``, which the MCP streamable-HTTP transport allows a server to do
("the server does not offer an SSE stream at this endpoint"); clients then rely on POST
responses only. ``DELETE`` (session end) is relayed.

Errors, none of which contacts the upstream: a run id in the path other than the caller's own →
404; an unknown server name → 404 naming the run's servers; a grant the run does not hold → 403;
a URL that is neither https nor loopback http → 403; another method → 405. An unreachable or
failing upstream → 502.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from valetkey_hookspecs import KernelAPI, Secret, ValetkeyError
from valetkey_hookspecs.redaction import redact_text

from .config import ProxyConfig
from .exchange import Request, Response
from .gate import Binding, inject_headers, url_problem
from .runs import McpServerSpec, Run
from .upstream import upstream_ssl_context

log = logging.getLogger("valetkey.proxy.mcp")

#: the prefix to register in ``gate.local_handlers``
PREFIX = "/mcp/"
#: request headers relayed upstream (lower case)
FORWARDED_REQUEST_HEADERS = (
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
)
#: response headers relayed back (lower case)
FORWARDED_RESPONSE_HEADERS = ("content-type", "mcp-session-id", "mcp-protocol-version")
#: the largest upstream response body buffered
MAX_RESPONSE_BODY = 32 * 1024 * 1024
REDACTED = "[REDACTED]"


class McpRelay:
    """The ``/mcp/`` endpoint of one daemon (register ``handle`` under ``PREFIX``); one HTTP
    client, verified TLS (``upstream_ssl``, else the system store plus ``config.extra_ca_file``)."""

    def __init__(
        self,
        kernel: KernelAPI,
        upstream_ssl: ssl.SSLContext | None = None,
        *,
        config: ProxyConfig | None = None,
        timeout: float = 300.0,
        max_response_body: int = MAX_RESPONSE_BODY,
        vend: Callable[[Run, Binding], Awaitable[Secret]] | None = None,
    ) -> None:
        self._kernel = kernel
        #: the gate's vend (re-resolves a re-granted slug); the broker's directly otherwise
        self._vend = vend or self._broker_vend
        self._max_body = max_response_body
        self._client = httpx.AsyncClient(
            verify=upstream_ssl or upstream_ssl_context(config.extra_ca_file if config else None),
            timeout=httpx.Timeout(timeout, connect=20.0),
            trust_env=False,  # never through the daemon's own proxy settings
            follow_redirects=False,
        )

    async def _broker_vend(self, run: Run, binding: Binding) -> Secret:
        return await self._kernel.broker.vend(
            run.spec.owner, binding.connection_id, actor=f"proxy:{run.run_id}"
        )

    async def aclose(self) -> None:
        """Close the upstream connections."""
        await self._client.aclose()

    async def handle(self, request: Request, run: Run) -> Response:
        """Relay one request under ``/mcp/`` for an authenticated ``run``."""
        path, sep, query = request.target.partition("?")
        parts = path[len(PREFIX) :].split("/", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            return _error(404, f"MCP servers are at {PREFIX}<run id>/<name>")
        run_id, name = parts[0], parts[1]
        rest = "/" + parts[2] if len(parts) == 3 else ""
        if run_id != run.run_id:
            # another run's endpoint looks exactly like one that does not exist
            return _error(404, f"no run {run_id!r} for this token")
        server = next((s for s in run.spec.mcp_servers if s.name == name), None)
        if server is None:
            known = ", ".join(s.name for s in run.spec.mcp_servers) or "none"
            return _error(404, f"run {run.run_id} has no MCP server {name!r} (it has: {known})")
        if request.method == "GET":
            response = _error(
                405,
                "the valetkey MCP relay does not offer a server-sent event stream on GET; "
                "use POST (responses arrive on each POST)",
            )
            response.headers.append(("Allow", "POST, DELETE"))
            return response
        if request.method not in ("POST", "DELETE"):
            response = _error(405, f"{request.method} is not allowed: use POST or DELETE")
            response.headers.append(("Allow", "POST, DELETE"))
            return response
        problem = url_problem(server.url)
        if problem:
            return _error(403, f"MCP server {name!r}: {problem}")
        headers = [(k, v) for k, v in request.headers if k.lower() in FORWARDED_REQUEST_HEADERS]
        real: tuple[str, ...] = ()
        if server.grant is not None:
            binding = _binding(run, server)
            if binding is None:
                return _error(
                    403,
                    f"MCP server {name!r} needs grant {server.grant!r}, which run {run.run_id} "
                    "does not hold",
                )
            try:
                secret = await self._vend(run, binding)
            except ValetkeyError as exc:
                return _error(502, f"valetkey could not add a credential: {redact_text(str(exc))}")
            headers, _, real = inject_headers(headers, binding, secret)
        url = _join(server.url, rest, query if sep else "")
        return await self._send(request, url, headers, real, name)

    async def _send(
        self,
        request: Request,
        url: str,
        headers: list[tuple[str, str]],
        real: tuple[str, ...],
        name: str,
    ) -> Response:
        try:
            upstream = self._client.build_request(
                request.method, url, headers=headers, content=request.body or None
            )
            answer = await self._client.send(upstream, stream=True)
            try:
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_body:
                        return _error(
                            502,
                            f"MCP server {name!r} answered more than {self._max_body} bytes",
                        )
            finally:
                await answer.aclose()
        except httpx.HTTPError as exc:
            message = _scrub(redact_text(f"{type(exc).__name__}: {exc}"), real)
            log.warning("MCP server %s unreachable: %s", name, message)
            return _error(502, f"MCP server {name!r} could not be reached: {message}")
        out_headers = [
            (k, _scrub(v, real))
            for k, v in answer.headers.items()
            if k.lower() in FORWARDED_RESPONSE_HEADERS
        ]
        return Response(answer.status_code, out_headers, _scrub_bytes(bytes(body), real))


# ---------------------------------------------------------------------- helpers


def _binding(run: Run, server: McpServerSpec) -> Binding | None:
    resolved = run.resolved
    bindings: tuple[Binding, ...] = getattr(resolved, "bindings", ()) if resolved else ()
    return next((b for b in bindings if b.grant == server.grant), None)


def _join(base: str, rest: str, query: str) -> str:
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + rest if rest else parts.path
    if parts.query and query:
        query = f"{parts.query}&{query}"
    return urlunsplit((parts.scheme, parts.netloc, path or "/", query or parts.query, ""))


def _scrub(text: str, real: tuple[str, ...]) -> str:
    for value in real:
        text = text.replace(value, REDACTED)
    return text


def _scrub_bytes(body: bytes, real: tuple[str, ...]) -> bytes:
    for value in real:
        body = body.replace(value.encode(), REDACTED.encode())
    return body


def _error(status: int, message: str) -> Response:
    body = json.dumps({"error": message}).encode()
    return Response(status, [("Content-Type", "application/json")], body)
