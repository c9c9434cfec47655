"""The relay host's ASGI app (``valetkey relay host``).

Routes:

- ``GET /connect`` — the connect page: a button that creates a relay (a fresh relay id and
  machine token; only the token's SHA-256 is stored) and shows the attach line once.
- ``WS /relay/<id>/ws/`` — the machine's connection, authenticated by ``Authorization: Bearer
  <machine token>`` at the handshake (401 otherwise). One live connection per relay: a new one
  supersedes the old. Frames over the size limit close the connection (1009); malformed or
  unexpected frames are logged and ignored.
- ``POST /relay/<id>/mcp`` — the public MCP endpoint (streamable HTTP, JSON responses, no
  session): each JSON-RPC request is forwarded to the machine and its answer returned.
  Callers need ``Authorization: Bearer <relay access token>`` (``valetkey relay token create``),
  else 401; 429 past the relay's rate limit; 413 past the size limit; 503 with a JSON-RPC error
  body saying so when the machine is not connected; 504 when it does not answer in time.
  Notifications are acknowledged (202) and not forwarded; ``GET`` (a server-sent event stream) is
  405, which MCP clients accept.
- ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from valetkey_hookspecs import NotFound
from valetkey_hookspecs.types import RelayRecord
from valetkey_relay.protocol import (
    FrameError,
    McpResponse,
    attach_line,
    decode_frame,
    error_body,
    mcp_url,
    new_machine_token,
    new_relay_id,
    token_hash,
)

from .config import RelayServerConfig
from .hub import CallTimeout, Hub, Link, NotConnected

log = logging.getLogger("valetkey.relay_server")

PROBE_HEADER = "x-valetkey-relay-probe"
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
NOT_CONNECTED = -32001
TIMED_OUT = -32002
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


def _bearer(headers: Any) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def build_app(
    kernel: Any,
    config: RelayServerConfig | None = None,
    hub: Hub | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Any:
    """The Starlette app of a relay host on ``kernel``'s store; ``on_ready`` is called once the
    store is open."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    cfg = config or RelayServerConfig()
    live = hub or Hub(cfg.rate_per_second, cfg.burst)

    def base_url(request: Request, relay_id: str) -> str:
        root = cfg.public_url.rstrip("/") if cfg.public_url else str(request.base_url).rstrip("/")
        return f"{root}/relay/{relay_id}/"

    # ------------------------------------------------------------------ the connect page

    async def connect_page(request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(_page(_FORM), headers=_PAGE_HEADERS)
        form = await request.form()
        label = str(form.get("label", ""))[:80].strip()
        if len(await kernel.store.relays.list()) >= cfg.max_relays:
            return HTMLResponse(
                _page("<p>This relay host is full: ask its operator.</p>"),
                status_code=503,
                headers=_PAGE_HEADERS,
            )
        relay_id, token = new_relay_id(), new_machine_token()
        await kernel.store.relays.put(
            RelayRecord(id=relay_id, machine_token_hash=token_hash(token), owner=label)
        )
        log.info("created relay %s", relay_id)
        base = base_url(request, relay_id)
        body = _ATTACHED.format(
            relay_id=html.escape(relay_id),
            line=html.escape(attach_line(base, token)),
            url=html.escape(base),
            mcp=html.escape(mcp_url(base)),
        )
        return HTMLResponse(_page(body), headers=_PAGE_HEADERS)

    # ------------------------------------------------------------------ the machine's socket

    async def machine_ok(relay_id: str, token: str | None) -> bool:
        if token is None:
            return False
        try:
            record = await kernel.store.relays.get(relay_id)
        except NotFound:
            return False
        return hmac.compare_digest(record.machine_token_hash, token_hash(token))

    async def machine_socket(websocket: WebSocket) -> None:
        relay_id = websocket.path_params["relay_id"]
        if not await machine_ok(relay_id, _bearer(websocket.headers)):
            log.warning("relay %s: refused a machine connection (bad or no token)", relay_id)
            await websocket.send_denial_response(
                JSONResponse(
                    {"error": "unauthorized", "message": "machine token rejected"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="valetkey-relay"'},
                )
            )
            return
        await websocket.accept()
        if websocket.headers.get(PROBE_HEADER):
            await websocket.close(1000, "probe ok")
            return
        lock = asyncio.Lock()

        async def send(text: str) -> None:
            async with lock:
                await websocket.send_text(text)

        async def close(code: int, reason: str) -> None:
            await websocket.close(code, reason)

        link = Link(relay_id, send, close)
        await live.attach(link)
        log.info("relay %s: machine connected", relay_id)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                try:
                    frame = decode_frame(data, cfg.max_frame_bytes)
                except FrameError as exc:
                    log.warning("relay %s: ignored a malformed frame: %s", relay_id, exc)
                    continue
                if not isinstance(frame, McpResponse):
                    log.warning("relay %s: ignored an unexpected mcp-request frame", relay_id)
                    continue
                if not live.resolve(link, frame):
                    log.warning("relay %s: ignored an answer nobody waits for", relay_id)
        finally:
            live.detach(link)
            log.info("relay %s: machine disconnected", relay_id)

    # ------------------------------------------------------------------ the public endpoint

    def rpc_error(
        status: int, jsonrpc_id: Any, code: int, message: str, **headers: str
    ) -> Response:
        body = error_body(jsonrpc_id, code, message)
        return JSONResponse(body, status_code=status, headers=headers or None)

    async def access_ok(relay_id: str, token: str | None) -> bool:
        if token is None:
            return False
        try:
            await kernel.store.relays.find_access_token(relay_id, token_hash(token))
        except NotFound:
            return False
        return True

    async def public_mcp(request: Request) -> Response:
        relay_id = request.path_params["relay_id"]
        if not await access_ok(relay_id, _bearer(request.headers)):
            return JSONResponse(
                {
                    "error": "unauthorized",
                    "message": "a relay access token is required: Authorization: Bearer <token> "
                    "(the relay's operator creates one with 'valetkey relay token create')",
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="valetkey-relay"'},
            )
        if request.method != "POST":
            return Response(status_code=405, headers={"Allow": "POST"})
        wait = live.admit(relay_id)
        if wait > 0:
            return rpc_error(
                429,
                None,
                INVALID_REQUEST,
                f"relay {relay_id}: too many requests, retry in {wait:.1f}s",
                **{"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        raw = await _read_limited(request, cfg.max_frame_bytes)
        if raw is None:
            return rpc_error(
                413, None, INVALID_REQUEST, f"request body over {cfg.max_frame_bytes} bytes"
            )
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            return rpc_error(400, None, PARSE_ERROR, "Parse error")
        if not isinstance(message, dict):
            return rpc_error(
                400, None, INVALID_REQUEST, "the body must be one JSON-RPC request (no batches)"
            )
        if "id" not in message:
            return Response(status_code=202)  # a notification: nothing to relay
        jsonrpc_id, method, params = message.get("id"), message.get("method"), message.get("params")
        if (
            not isinstance(jsonrpc_id, str | int)
            or isinstance(jsonrpc_id, bool)
            or not isinstance(method, str)
            or (params is not None and not isinstance(params, dict))
        ):
            return rpc_error(400, None, INVALID_REQUEST, "Invalid request")
        try:
            body = await live.forward(
                relay_id,
                jsonrpc_id,
                method,
                params,
                request.headers.get("mcp-protocol-version"),
                cfg.call_timeout,
            )
        except NotConnected:
            return rpc_error(
                503,
                jsonrpc_id,
                NOT_CONNECTED,
                f"relay {relay_id}: the machine is not connected right now "
                "(its owner starts it with 'valetkey relay serve')",
            )
        except CallTimeout:
            return rpc_error(
                504,
                jsonrpc_id,
                TIMED_OUT,
                f"relay {relay_id}: the machine did not answer within {cfg.call_timeout:g}s",
            )
        return JSONResponse(body)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "machines_connected": len(live.links)})

    async def index(_request: Request) -> Response:
        from starlette.responses import RedirectResponse

        return RedirectResponse("/connect", status_code=303)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        async with kernel:
            if on_ready is not None:
                on_ready()
            yield

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/healthz", healthz),
            Route("/connect", connect_page, methods=["GET", "POST"]),
            WebSocketRoute("/relay/{relay_id}/ws/", machine_socket),
            WebSocketRoute("/relay/{relay_id}/ws", machine_socket),
            Route("/relay/{relay_id}/mcp", public_mcp, methods=["GET", "POST", "DELETE"]),
        ],
        lifespan=lifespan,
    )
    app.state.hub = live
    return app


def uvicorn_config(app: Any, config: RelayServerConfig) -> Any:
    """The ``uvicorn.Config`` a relay host runs ``app`` with: the WebSocket frame limit, pings
    every 20 s on idle machine connections, no access log (URLs are not secret, but quiet)."""
    import uvicorn

    return uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        access_log=False,
        log_config=None,
        ws="websockets-sansio",
        ws_max_size=config.max_frame_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )


async def _read_limited(request: Any, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _page(body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<title>valetkey relay</title><style>body{font:16px system-ui,sans-serif;max-width:46em;"
        "margin:3em auto;padding:0 1em}code,pre{background:#f3f3f3;padding:.2em .4em}"
        "pre{white-space:pre-wrap;word-break:break-all;padding:1em}</style></head><body>"
        f"<h1>valetkey relay</h1>{body}</body></html>"
    )


_FORM = """
<p>Serve the MCP tools of a machine running valetkey through this relay, over a WebSocket
the machine opens: no open port on the machine.</p>
<form method=post action=/connect>
<label>Name for this machine (optional): <input name=label maxlength=80></label>
<button type=submit>Create a relay for my machine</button>
</form>
"""

_ATTACHED = """
<p>Relay <code>{relay_id}</code> is ready. Copy this attach line now: it holds the machine
token, which is shown only once.</p>
<pre id=attach-line>{line}</pre>
<p>Paste it where <code>valetkey relay connect</code> asks for it, or run
<code>valetkey relay attach --url {url} --token-stdin</code> and give it the token on stdin.
Then run <code>valetkey relay serve</code>.</p>
<p>The public MCP endpoint is <code>{mcp}</code>; callers need an access token the operator of
this relay creates with <code>valetkey relay token create {relay_id}</code>.</p>
"""
