"""The machine's side of the relay connection: :func:`probe` (one handshake, to check a token)
and :func:`serve` (the dispatcher loop behind ``valetkey relay serve``).

``serve`` dials the relay's WebSocket with the machine token as a Bearer token and answers every
``mcp-request`` frame with an ``mcp-response`` frame, handling requests concurrently (at most
``concurrency`` at a time), each bounded by ``call_timeout``. Each (re)connection gets a fresh
MCP server from the factory, so no state of an earlier session leaks into the next; a factory
error aborts the loop (a silent empty server would look like a healthy one with no tools).
WebSocket pings keep an idle connection alive and detect a dead one. A lost connection is
retried with exponential backoff from 1 s, doubling up to 30 s, back to 1 s after a connection
that lasted more than 60 s. A rejected token (HTTP 401/403) is not retried: it will not get
better by itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio

from valetkey_hookspecs import Unauthorized, ValetkeyError

from .credential import Credential
from .dispatch import McpDispatcher
from .protocol import (
    MAX_FRAME_BYTES,
    FrameError,
    McpRequest,
    McpResponse,
    decode_frame,
    error_body,
)

log = logging.getLogger("valetkey.relay")

INTERNAL_ERROR = -32603
#: a request header that asks the relay to authenticate only, not to route requests here
PROBE_HEADER = "X-Valetkey-Relay-Probe"
PROBE_TIMEOUT = 5.0


class ProbeUnauthorized(Unauthorized):
    """The relay rejected the machine token."""


class RelayUnavailable(ValetkeyError):
    """The relay could not be reached or answered something other than a WebSocket."""


class RelayServeError(ValetkeyError):
    """``relay serve`` cannot go on (e.g. the MCP server cannot be built)."""


def unauthorized(status: int) -> ProbeUnauthorized:
    """The one message for a rejected machine token."""
    return ProbeUnauthorized(
        f"the relay rejected the machine token (HTTP {status}): the token is wrong, or the relay "
        "was reset; re-run 'valetkey relay connect' to attach again"
    )


def _headers(cred: Credential, *, probe: bool = False) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {cred.machine_token}"}
    if probe:
        headers[PROBE_HEADER] = "1"
    return headers


def _where(cred: Credential) -> str:
    parts = urlsplit(cred.relay_base_url)
    return parts.netloc or cred.relay_base_url


async def probe(cred: Credential, timeout: float = PROBE_TIMEOUT) -> None:
    """One WebSocket handshake with the machine token; returns when the relay accepted it.

    Raises :class:`ProbeUnauthorized` on 401/403, :class:`RelayUnavailable` otherwise (the
    whole exchange is bounded by ``timeout`` seconds).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    url = cred.websocket_url()
    try:
        with anyio.fail_after(timeout):
            async with connect(
                url, additional_headers=_headers(cred, probe=True), open_timeout=None
            ) as ws:
                await ws.close()
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise unauthorized(status) from None
        raise RelayUnavailable(
            f"the relay at {_where(cred)} answered HTTP {status} instead of a WebSocket "
            "(is the URL right?)"
        ) from None
    except TimeoutError:
        raise RelayUnavailable(
            f"the relay at {_where(cred)} did not answer within {timeout:g}s"
        ) from None
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        raise RelayUnavailable(
            f"cannot reach the relay at {_where(cred)}: {_reason(exc)}"
        ) from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


@dataclass
class ServeOptions:
    """Knobs of :func:`serve` (the defaults are what ``valetkey relay serve`` uses)."""

    call_timeout: float = 60.0
    max_frame_bytes: int = MAX_FRAME_BYTES
    concurrency: int = 64
    ping_interval: float = 20.0
    open_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_cap: float = 30.0
    backoff_reset_after: float = 60.0
    #: called after each successful connection, with the relay id
    on_connected: Callable[[str], None] | None = None
    #: called before each wait, with the delay and why the connection ended
    on_retry: Callable[[float, str], None] | None = None


class Backoff:
    """Exponential backoff: ``initial``, doubling to ``cap``; reset after a connection that
    lasted longer than ``reset_after`` seconds."""

    def __init__(self, initial: float = 1.0, cap: float = 30.0, reset_after: float = 60.0) -> None:
        self.initial, self.cap, self.reset_after = initial, cap, reset_after
        self._next = initial

    def next_delay(self, connected_for: float | None = None) -> float:
        """The wait before the next attempt; ``connected_for`` is how long the connection that
        just ended lasted (None: the attempt failed before connecting)."""
        if connected_for is not None and connected_for > self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay


async def serve(
    cred: Credential, factory: Callable[[], Any], options: ServeOptions | None = None
) -> None:
    """Run the dispatcher loop until cancelled; raises :class:`ProbeUnauthorized` when the relay
    rejects the token and :class:`RelayServeError` when ``factory`` fails."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    opts = options or ServeOptions()
    backoff = Backoff(opts.backoff_initial, opts.backoff_cap, opts.backoff_reset_after)
    url = cred.websocket_url()
    while True:
        try:
            server = factory()
        except Exception as exc:
            raise RelayServeError(
                f"cannot build the MCP server for the relay: {type(exc).__name__}: {exc}"
            ) from None
        connected_at: float | None = None
        try:
            async with (
                connect(
                    url,
                    additional_headers=_headers(cred),
                    open_timeout=opts.open_timeout,
                    max_size=opts.max_frame_bytes,
                    ping_interval=opts.ping_interval,
                    ping_timeout=opts.ping_interval,
                    close_timeout=2,
                ) as ws,
                McpDispatcher(server) as dispatcher,
            ):
                connected_at = time.monotonic()
                log.info("connected to relay %s", cred.relay_id)
                if opts.on_connected is not None:
                    opts.on_connected(cred.relay_id)
                await _run_connection(ws, dispatcher, opts)
                why = _closed_reason(ws)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise unauthorized(status) from None
            why = f"the relay answered HTTP {status}"
        except ConnectionClosed as exc:
            why = f"connection closed ({exc})"
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            why = f"cannot reach the relay at {_where(cred)}: {_reason(exc)}"
        connected_for = None if connected_at is None else time.monotonic() - connected_at
        delay = backoff.next_delay(connected_for)
        log.warning("relay %s: %s; reconnecting in %gs", cred.relay_id, why, delay)
        if opts.on_retry is not None:
            opts.on_retry(delay, why)
        await anyio.sleep(delay)


def _closed_reason(ws: Any) -> str:
    code, reason = getattr(ws, "close_code", None), getattr(ws, "close_reason", "") or ""
    if code is None:
        return "connection lost"
    return f"connection closed by the relay ({code}{': ' + reason if reason else ''})"


async def _run_connection(ws: Any, dispatcher: McpDispatcher, opts: ServeOptions) -> None:
    """Answer requests until the connection ends; in-flight requests are then cancelled."""
    from websockets.exceptions import ConnectionClosed

    limiter = anyio.CapacityLimiter(opts.concurrency)
    async with anyio.create_task_group() as group:
        try:
            async for message in ws:
                try:
                    frame = decode_frame(message, opts.max_frame_bytes)
                except FrameError as exc:
                    log.warning("ignored a malformed frame from the relay: %s", exc)
                    continue
                if not isinstance(frame, McpRequest):
                    log.warning("ignored an unexpected mcp-response frame from the relay")
                    continue
                group.start_soon(_answer, ws, dispatcher, frame, limiter, opts)
        except ConnectionClosed:
            pass
        group.cancel_scope.cancel()


async def _answer(
    ws: Any,
    dispatcher: McpDispatcher,
    frame: McpRequest,
    limiter: anyio.CapacityLimiter,
    opts: ServeOptions,
) -> None:
    from websockets.exceptions import ConnectionClosed

    async with limiter:
        try:
            with anyio.fail_after(opts.call_timeout):
                body = await dispatcher.handle(
                    frame.jsonrpc_id, frame.method, frame.params, frame.protocol_version
                )
        except TimeoutError:
            body = error_body(
                frame.jsonrpc_id,
                INTERNAL_ERROR,
                f"{frame.method} timed out after {opts.call_timeout:g}s on the machine",
            )
        except Exception as exc:  # McpDispatcher.handle maps errors itself; this is a bug
            log.error("relayed %s failed: %s", frame.method, type(exc).__name__, exc_info=exc)
            body = error_body(frame.jsonrpc_id, INTERNAL_ERROR, "Internal error")
    body["id"] = frame.jsonrpc_id
    text = McpResponse(frame.request_id, body).encode()
    if len(text.encode("utf-8")) > opts.max_frame_bytes:
        log.warning(
            "the answer to %s is %d bytes, over the %d-byte frame limit: sent an error instead",
            frame.method,
            len(text),
            opts.max_frame_bytes,
        )
        text = McpResponse(
            frame.request_id,
            error_body(
                frame.jsonrpc_id,
                INTERNAL_ERROR,
                f"the answer is over the relay's frame size limit ({opts.max_frame_bytes} bytes)",
            ),
        ).encode()
    try:
        await ws.send(text)
    except ConnectionClosed:
        log.info("the relay connection closed before the answer to %s was sent", frame.method)


__all__ = [
    "PROBE_HEADER",
    "Backoff",
    "ProbeUnauthorized",
    "RelayServeError",
    "RelayUnavailable",
    "ServeOptions",
    "probe",
    "serve",
]
