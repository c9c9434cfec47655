"""The relay's wire protocol and the text formats both ends agree on.

This module is shared by the two ends: the client (this plugin, ``valetkey relay serve``) and the
public side (``valetkey-relay-server``, which depends on this distribution for it). It lives here
rather than in a third distribution because every relay host is also a valetkey install that
can attach, the module is pure standard library (importing it costs nothing), and one place for
the envelope means the two ends cannot drift apart.

What is here:

- **URLs**: :func:`parse_relay_url` (what ``valetkey relay attach --url`` accepts) and
  :func:`websocket_url` (what ``relay serve`` dials: ``http`` → ``ws``, ``https`` → ``wss``,
  plus ``ws/``).
- **Envelopes** (one JSON text frame each): the relay sends
  ``{"type": "mcp-request", "request_id", "jsonrpc_id", "method", "params"}`` (plus an optional
  ``protocol_version``: the ``MCP-Protocol-Version`` header the public caller sent) and the
  machine answers ``{"type": "mcp-response", "request_id", "body": {"jsonrpc": "2.0", "id",
  "result" | "error"}}``. :func:`decode_frame` turns a frame into a :class:`McpRequest` or
  :class:`McpResponse`, or raises :class:`FrameError` saying why it is malformed.
- **Tokens**: machine tokens (``vkm_…``) and relay access tokens (``vkr_…``) are 43 random
  URL-safe characters after the prefix; :func:`token_hash` is what the relay server stores;
  :func:`mask_token` is how a token is ever shown (``abcd...********``).
- **The attach line**: what the connect page shows and ``valetkey relay connect`` reads back,
  in any reasonable form (:func:`parse_attach_line`).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from valetkey_hookspecs import InvalidInput

#: the OS keyring service machine tokens are filed under (the account is the relay id)
KEYRING_SERVICE = "valetkey-relay"
MACHINE_TOKEN_PREFIX = "vkm_"  # noqa: S105 - a prefix, not a secret
ACCESS_TOKEN_PREFIX = "vkr_"  # noqa: S105 - a prefix, not a secret
RELAY_ID_PREFIX = "rly_"
#: default largest frame (either direction) and largest public request body, in bytes
MAX_FRAME_BYTES = 1024 * 1024
#: the longest token accepted anywhere (real ones are 47 characters)
MAX_TOKEN_LENGTH = 512

REQUEST = "mcp-request"
RESPONSE = "mcp-response"

_RELAY_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


# --------------------------------------------------------------------------- URLs


def parse_relay_url(raw: str) -> tuple[str, str]:
    """``(base_url, relay_id)`` from a relay URL such as ``https://relay.example/relay/rly_x/``.

    Only ``http`` and ``https``; the path must contain ``/relay/<id>``. Anything after the id
    (``mcp``, ``ws/``, ...), the query and the fragment are dropped; the base URL always ends
    with ``/relay/<id>/``. Raises :class:`InvalidInput` naming what is wrong.
    """
    text = raw.strip()
    if not text:
        raise InvalidInput("relay URL is empty")
    try:
        parts = urlsplit(text)
        port = parts.port  # validates the port
    except ValueError as exc:
        raise InvalidInput(f"relay URL {_show(text)} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidInput(
            f"relay URL {_show(text)} must start with https:// (or http:// for a local relay)"
        )
    if not parts.hostname:
        raise InvalidInput(f"relay URL {_show(text)} has no host")
    if parts.username or parts.password:
        raise InvalidInput("relay URL must not contain a user name or password")
    segments = parts.path.split("/")
    try:
        at = segments.index("relay")
    except ValueError:
        raise InvalidInput(
            f"relay URL {_show(text)} has no /relay/<id>/ in its path "
            "(copy the URL the relay's connect page shows)"
        ) from None
    relay_id = segments[at + 1] if at + 1 < len(segments) else ""
    if not relay_id:
        raise InvalidInput(f"relay URL {_show(text)} has an empty relay id after /relay/")
    if not _RELAY_ID.match(relay_id):
        raise InvalidInput(
            f"relay URL {_show(text)}: the relay id {relay_id[:40]!r} may only hold letters, "
            "digits, '_' and '-'"
        )
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    path = "/".join([*segments[: at + 2], ""])
    return urlunsplit((scheme, netloc, path, "", "")), relay_id


def websocket_url(base_url: str) -> str:
    """The WebSocket URL of a relay base URL: ``http`` → ``ws``, ``https`` → ``wss``, + ``ws/``."""
    base, _relay_id = parse_relay_url(base_url)
    scheme, rest = base.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}ws/"


def mcp_url(base_url: str) -> str:
    """The public MCP endpoint of a relay base URL (``…/relay/<id>/mcp``)."""
    base, _relay_id = parse_relay_url(base_url)
    return f"{base}mcp"


def _show(text: str) -> str:
    """A URL for an error message: cut short, and never its query (it may hold a token)."""
    cut = text.split("?", 1)[0].split("#", 1)[0]
    return repr(cut if len(cut) <= 120 else cut[:117] + "...")


# --------------------------------------------------------------------------- tokens


def new_machine_token() -> str:
    """A fresh machine token."""
    return MACHINE_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_access_token() -> str:
    """A fresh relay access token."""
    return ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_relay_id() -> str:
    """A fresh relay id (URL-safe)."""
    return RELAY_ID_PREFIX + secrets.token_hex(8)


def token_hash(token: str) -> str:
    """What the relay server stores for a token: its hex SHA-256 (tokens are 256-bit random, so
    no salt or slow hash is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token(token: str, what: str = "machine token") -> str:
    """``token`` stripped, or :class:`InvalidInput` (that never shows the value)."""
    value = token.strip()
    if not value:
        raise InvalidInput(f"the {what} is empty")
    if len(value) > MAX_TOKEN_LENGTH:
        raise InvalidInput(f"the {what} is too long ({len(value)} characters)")
    if not _TOKEN.match(value):
        raise InvalidInput(f"the {what} holds spaces or characters that are not printable ASCII")
    return value


def mask_token(token: str) -> str:
    """``abcd...********``; ``****`` when the token has 4 characters or fewer."""
    if len(token) <= 4:
        return "****"
    return f"{token[:4]}...********"


# --------------------------------------------------------------------------- the attach line


def attach_line(base_url: str, token: str) -> str:
    """The line the connect page shows: ``<relay url> <machine token>``."""
    return f"{base_url} {token}"


_NOISE = {"valetkey", "relay", "attach", "$", "--token-stdin", "--force", "|"}
_URL_FLAGS = ("--url", "url", "relay_url", "relay_base_url")
_TOKEN_FLAGS = ("--token", "token", "machine_token")


def parse_attach_line(text: str) -> tuple[str, str]:
    """``(base_url, machine_token)`` from a pasted attach line, in any reasonable form:

    - ``https://…/relay/<id>/ vkm_…`` (what the connect page shows), or the two the other way
      round, on one or two lines, or after ``valetkey relay attach``;
    - with flags: ``--url URL --token TOKEN``, ``--url=URL``, ``url=URL token=TOKEN``;
    - JSON: ``{"url": "…", "token": "…"}`` (also ``relay_url`` / ``machine_token``);
    - wrapped in quotes or backticks, after a ``$`` prompt.

    Raises :class:`InvalidInput` saying what is missing (never echoing the token).
    """
    stripped = text.strip().strip("`").strip()
    if not stripped:
        raise InvalidInput("the attach line is empty: paste the line the connect page shows")
    if stripped.startswith("{"):
        return _from_json(stripped)
    try:
        words = shlex.split(stripped.replace("\n", " "))
    except ValueError:
        words = stripped.split()
    url: str | None = None
    token: str | None = None
    loose: list[str] = []
    i = 0
    while i < len(words):
        word = words[i].strip("`'\"")
        key, eq, value = word.partition("=")
        lowered = key.lower()
        if eq and lowered in _URL_FLAGS:
            url = value
        elif eq and lowered in _TOKEN_FLAGS:
            token = value
        elif lowered in _URL_FLAGS[:1] and i + 1 < len(words):
            url, i = words[i + 1], i + 1
        elif lowered in _TOKEN_FLAGS[:1] and i + 1 < len(words):
            token, i = words[i + 1], i + 1
        elif word and word.lower() not in _NOISE:
            loose.append(word)
        i += 1
    if url is None:
        urls = [w for w in loose if w.lower().startswith(("http://", "https://"))]
        if len(urls) != 1:
            raise InvalidInput(
                "the attach line holds no relay URL (https://…/relay/<id>/)"
                if not urls
                else "the attach line holds more than one URL: paste just the one line"
            )
        url = urls[0]
        loose.remove(url)
    if token is None:
        if len(loose) != 1:
            raise InvalidInput(
                "the attach line holds no machine token"
                if not loose
                else "the attach line holds more than one candidate machine token: paste just "
                "the line the connect page shows"
            )
        token = loose[0]
    base, _relay_id = parse_relay_url(url)
    return base, check_token(token)


def _from_json(text: str) -> tuple[str, str]:
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidInput("the attach line looks like JSON but does not parse") from None
    if not isinstance(data, dict):
        raise InvalidInput("the attach line's JSON must be an object with url and token")
    url = next((data[k] for k in ("url", "relay_url", "relay_base_url") if k in data), None)
    token = next((data[k] for k in ("token", "machine_token") if k in data), None)
    if not isinstance(url, str) or not isinstance(token, str):
        raise InvalidInput("the attach line's JSON needs string fields url and token")
    base, _relay_id = parse_relay_url(url)
    return base, check_token(token)


# --------------------------------------------------------------------------- envelopes


class FrameError(ValueError):
    """A frame that is not a well-formed envelope; the message says why (never its content)."""


@dataclass(frozen=True, slots=True)
class McpRequest:
    """One public JSON-RPC request, relayed to the machine."""

    request_id: str
    jsonrpc_id: Any
    method: str
    params: dict[str, Any] | None = None
    protocol_version: str | None = None

    def encode(self) -> str:
        """The frame's text."""
        frame: dict[str, Any] = {
            "type": REQUEST,
            "request_id": self.request_id,
            "jsonrpc_id": self.jsonrpc_id,
            "method": self.method,
            "params": self.params,
        }
        if self.protocol_version is not None:
            frame["protocol_version"] = self.protocol_version
        return json.dumps(frame, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class McpResponse:
    """The machine's answer to one :class:`McpRequest`."""

    request_id: str
    body: dict[str, Any]

    def encode(self) -> str:
        """The frame's text."""
        return json.dumps(
            {"type": RESPONSE, "request_id": self.request_id, "body": self.body},
            separators=(",", ":"),
        )


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def decode_frame(data: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> McpRequest | McpResponse:
    """Parse one frame; :class:`FrameError` when it is too large, not JSON, of an unknown type or
    missing a field."""
    size = len(data)
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes is over the {max_bytes}-byte limit")
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        raise FrameError(f"frame of {size} bytes is not JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("frame is not a JSON object")
    kind = frame.get("type")
    request_id = frame.get("request_id")
    if kind not in (REQUEST, RESPONSE):
        raise FrameError(f"unknown frame type {str(kind)[:40]!r}")
    if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
        raise FrameError(f"{kind} frame without a valid request_id")
    if kind == RESPONSE:
        body = frame.get("body")
        if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
            raise FrameError("mcp-response frame without a JSON-RPC 2.0 body")
        if ("result" in body) == ("error" in body):
            raise FrameError("mcp-response body must hold exactly one of result and error")
        return McpResponse(request_id, body)
    method = frame.get("method")
    params = frame.get("params")
    version = frame.get("protocol_version")
    if not isinstance(method, str) or not method:
        raise FrameError("mcp-request frame without a method")
    if not _is_id(frame.get("jsonrpc_id")):
        raise FrameError("mcp-request frame without a valid jsonrpc_id")
    if params is not None and not isinstance(params, dict):
        raise FrameError("mcp-request params must be an object")
    if version is not None and not isinstance(version, str):
        raise FrameError("mcp-request protocol_version must be a string")
    return McpRequest(request_id, frame["jsonrpc_id"], method, params, version)


def error_body(jsonrpc_id: Any, code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC error response body."""
    return {"jsonrpc": "2.0", "id": jsonrpc_id, "error": {"code": code, "message": message}}


__all__ = [
    "ACCESS_TOKEN_PREFIX",
    "KEYRING_SERVICE",
    "MACHINE_TOKEN_PREFIX",
    "MAX_FRAME_BYTES",
    "FrameError",
    "McpRequest",
    "McpResponse",
    "attach_line",
    "check_token",
    "decode_frame",
    "error_body",
    "mask_token",
    "mcp_url",
    "new_access_token",
    "new_machine_token",
    "new_relay_id",
    "parse_attach_line",
    "parse_relay_url",
    "token_hash",
    "websocket_url",
]
