"""The wire format between a hub (``valetkey serve``) and its spokes (``valetkey spoke run``).

One WebSocket per spoke, dialled by the spoke to ``<hub>/spoke/connect`` (outbound only, so a
spoke behind NAT works). Every frame is one JSON object (text) of at most ``max_frame_bytes``:

- spoke → hub, first frame: ``{"type": "enroll", "name", "join_token", "runtime"}`` (first
  time) or ``{"type": "hello", "name", "credential", "runtime"}`` (every later connection);
- hub → spoke: ``{"type": "welcome", "spoke_id", "name"}`` plus ``"credential"`` after an
  enrollment (the only time the hub ever sends it), or a close with a :data:`CLOSE_CODES` code;
- hub → spoke: ``{"type": "call", "id", "method", "params"}`` (``method`` one of
  :data:`METHODS`);
- spoke → hub: ``{"type": "result", "id", "result"}`` or ``{"type": "error", "id", "error":
  {"kind", "message"}}`` (``kind`` names a valetkey error class, see :func:`error_from`).

Join tokens and credentials travel only in the first frame and the welcome; they are never in a
URL, a header, a log line or an exception text. Box specs carry files as base64 and env as-is
(env values may be proxy placeholders: use ``wss://`` between hosts).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from valetkey_hookspecs import (
    Box,
    BoxFile,
    BoxSpec,
    Conflict,
    ExecResult,
    InvalidInput,
    NotFound,
    RuntimeUnavailable,
    Unauthorized,
    ValetkeyError,
)
from valetkey_hookspecs.boxes import is_valid_box_id

from .jointokens import JOIN_TOKEN_PREFIX

#: the label a spoke stamps on its boxes (its name): a spoke sees only boxes with its own name,
#: and a hub's own runtime leaves boxes with any spoke name alone (several spokes, or a spoke
#: and a hub, may share one engine)
SPOKE_LABEL = "valetkey.spoke"
#: the path a spoke dials on the hub
CONNECT_PATH = "/spoke/connect"
#: the largest frame either side accepts by default (a box spec with files is the big one)
MAX_FRAME_BYTES = 8 * 1024 * 1024
#: seconds a hub waits for the first frame of a new connection
HELLO_TIMEOUT = 10.0
#: what the hub may ask a spoke to do (the BoxRuntime protocol, minus close)
METHODS = ("create", "get", "list", "exec", "logs", "write_stdin", "destroy", "is_alive")
#: a spoke credential: this prefix, then 32 random bytes (url-safe base64)
CREDENTIAL_PREFIX = "vksc_"
MAX_SECRET = 200

#: WebSocket close codes the hub uses, and whether a spoke should try again
CLOSE_SUPERSEDED = 4000
CLOSE_BAD_HELLO = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_NAME_TAKEN = 4409
CLOSE_CODES = {
    CLOSE_SUPERSEDED: "another connection of this spoke replaced this one",
    CLOSE_BAD_HELLO: "the first frame was not a valid hello or enroll",
    CLOSE_UNAUTHORIZED: "the hub refused the credential or join token",
    CLOSE_NAME_TAKEN: "another spoke is enrolled under this name",
}
#: close codes after which a spoke stops (retrying will not help)
FATAL_CLOSE_CODES = frozenset(CLOSE_CODES)

_ERRORS: dict[str, type[ValetkeyError]] = {
    "NotFound": NotFound,
    "Conflict": Conflict,
    "InvalidInput": InvalidInput,
    "RuntimeUnavailable": RuntimeUnavailable,
    "Unauthorized": Unauthorized,
}


class FrameError(ValetkeyError):
    """A frame that is not valid JSON, too big, or not of a known shape."""


def new_secret(prefix: str) -> str:
    """``prefix`` + 32 random bytes, url-safe base64 (no padding)."""
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What a hub stores of a join token or a spoke credential."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_secret(secret: object, prefix: str) -> str:
    """``secret`` when it looks like one of ours (no content is ever echoed back)."""
    if (
        not isinstance(secret, str)
        or not secret.startswith(prefix)
        or not 20 <= len(secret) <= MAX_SECRET
        or not all(c.isalnum() or c in "-_" for c in secret[len(prefix) :])
    ):
        kind = "join token" if prefix == JOIN_TOKEN_PREFIX else "spoke credential"
        raise InvalidInput(f"this is not a valetkey {kind} (it should start with {prefix!r})")
    return secret


def check_spoke_name(name: object) -> str:
    """A spoke name: a DNS label like a box id, and not ``local`` (the hub's own runtime)."""
    if not isinstance(name, str) or not is_valid_box_id(name) or name == "local":
        raise InvalidInput(
            "spoke name: use 1-63 lower-case letters, digits and dashes, starting and ending "
            "with a letter or digit (and not 'local')"
        )
    return name


def websocket_url(hub_url: str) -> str:
    """``ws(s)://host/…/spoke/connect`` from the hub's base URL (http → ws, https → wss)."""
    parts = urlsplit(hub_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(
            "--hub: give the hub's base URL, e.g. https://hub.example.com (no query string)"
        )
    if parts.username or parts.password:
        raise InvalidInput("--hub: the URL must not carry a user name or password")
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if scheme == "ws" and not loopback:
        raise InvalidInput("--hub: use https:// (plain http is allowed on loopback only)")
    path = parts.path.rstrip("/") + CONNECT_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


# --------------------------------------------------------------------------- frames


def encode(frame: Mapping[str, Any]) -> str:
    """One frame as text."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def decode(data: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """One frame from text; :class:`FrameError` when too big, not JSON or not an object with a
    string ``type``."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8"))
    if size > max_bytes:
        raise FrameError(f"a frame of {size} bytes is over the {max_bytes}-byte limit")
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        raise FrameError("a frame is not valid JSON") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise FrameError("a frame must be a JSON object with a 'type'")
    return frame


def error_frame(call_id: int, exc: BaseException) -> dict[str, Any]:
    """The answer to a call that raised: its class (when one of ours) and message."""
    from valetkey_hookspecs.redaction import redact_text

    kind = next((k for k, cls in _ERRORS.items() if isinstance(exc, cls)), "ValetkeyError")
    if isinstance(exc, ValetkeyError):
        message = str(exc)
    else:
        message = f"the spoke failed: {type(exc).__name__}"
    error = {"kind": kind, "message": redact_text(message)}
    return {"type": "error", "id": call_id, "error": error}


def error_from(spoke: str, error: object) -> ValetkeyError:
    """The exception a hub raises for a spoke's error frame (the message names the spoke)."""
    kind, message = "ValetkeyError", "the spoke sent an error without a message"
    if isinstance(error, dict):
        kind = str(error.get("kind") or kind)
        message = str(error.get("message") or message)[:2000]
    cls = _ERRORS.get(kind, RuntimeUnavailable)
    return cls(f"spoke {spoke!r}: {message}")


# --------------------------------------------------------------------------- values


def spec_to_wire(spec: BoxSpec) -> dict[str, Any]:
    """A box spec as JSON (files base64)."""
    return {
        "box_id": spec.box_id,
        "image": spec.image,
        "description": spec.description,
        "env": dict(spec.env),
        "files": [
            {
                "path": f.path,
                "content": base64.b64encode(f.content).decode("ascii"),
                "mode": f.mode,
                "uid": f.uid,
                "gid": f.gid,
            }
            for f in spec.files
        ],
        "command": list(spec.command) if spec.command is not None else None,
        "memory_mib": spec.memory_mib,
        "cpus": spec.cpus,
        "pids": spec.pids,
        "network": spec.network,
        "labels": dict(spec.labels),
        "stdin_open": spec.stdin_open,
    }


def _opt(value: object, kind: type | tuple[type, ...], name: str) -> Any:
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise InvalidInput(f"box spec: {name} has the wrong type")
    return value


def spec_from_wire(data: object) -> BoxSpec:
    """A box spec from JSON; :class:`InvalidInput` for anything of the wrong shape."""
    if not isinstance(data, dict):
        raise InvalidInput("box spec: expected an object")
    try:
        env = data.get("env") or {}
        labels = data.get("labels") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidInput("box spec: env must map strings to strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise InvalidInput("box spec: labels must map strings to strings")
        files = tuple(
            BoxFile(
                path=str(f["path"]),
                content=base64.b64decode(str(f["content"]), validate=True),
                mode=int(f.get("mode", 0o644)),
                uid=int(f.get("uid", 0)),
                gid=int(f.get("gid", 0)),
            )
            for f in (data.get("files") or [])
        )
        command = data.get("command")
        if command is not None and not (
            isinstance(command, list) and all(isinstance(c, str) for c in command)
        ):
            raise InvalidInput("box spec: command must be a list of strings")
        return BoxSpec(
            box_id=str(data["box_id"]),
            image=str(data["image"]),
            description=str(data.get("description") or ""),
            env=env,
            files=files,
            command=tuple(command) if command is not None else None,
            memory_mib=_opt(data.get("memory_mib"), int, "memory_mib"),
            cpus=_opt(data.get("cpus"), (int, float), "cpus"),
            pids=_opt(data.get("pids"), int, "pids"),
            network=_opt(data.get("network"), str, "network"),
            labels=labels,
            stdin_open=bool(data.get("stdin_open", True)),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidInput("box spec: malformed") from None


def box_to_wire(box: Box) -> dict[str, Any]:
    """A box as JSON."""
    return {
        "id": box.id,
        "runtime": box.runtime,
        "image": box.image,
        "state": box.state,
        "container_id": box.container_id,
        "description": box.description,
        "labels": dict(box.labels),
        "created_at": box.created_at.isoformat() if box.created_at else None,
    }


def box_from_wire(data: object, spoke: str) -> Box:
    """A box a spoke reported, tagged with the spoke; :class:`FrameError` when malformed."""
    if not isinstance(data, dict) or not is_valid_box_id(str(data.get("id"))):
        raise FrameError(f"spoke {spoke!r} reported a malformed box")
    created = data.get("created_at")
    labels = data.get("labels") or {}
    try:
        return Box(
            id=data["id"],
            runtime=str(data.get("runtime") or ""),
            image=str(data.get("image") or ""),
            state=str(data.get("state") or ""),
            container_id=str(data["container_id"]) if data.get("container_id") else None,
            description=str(data.get("description") or ""),
            labels={str(k): str(v) for k, v in labels.items()},
            created_at=datetime.fromisoformat(created) if isinstance(created, str) else None,
            spoke=spoke,
        )
    except (TypeError, ValueError, AttributeError):
        raise FrameError(f"spoke {spoke!r} reported a malformed box") from None


def exec_to_wire(result: ExecResult) -> dict[str, Any]:
    """An exec result as JSON."""
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "exit_code": result.exit_code,
        "truncated": result.truncated,
    }


def exec_from_wire(data: object, spoke: str) -> ExecResult:
    """An exec result from JSON; :class:`FrameError` when malformed."""
    if not isinstance(data, dict):
        raise FrameError(f"spoke {spoke!r} sent a malformed exec result")
    try:
        return ExecResult(
            stdout=str(data["stdout"]),
            stderr=str(data["stderr"]),
            exit_code=int(data["exit_code"]),
            truncated=bool(data.get("truncated", False)),
        )
    except (KeyError, TypeError, ValueError):
        raise FrameError(f"spoke {spoke!r} sent a malformed exec result") from None


__all__ = [
    "CLOSE_BAD_HELLO",
    "CLOSE_CODES",
    "CLOSE_NAME_TAKEN",
    "CLOSE_SUPERSEDED",
    "CLOSE_UNAUTHORIZED",
    "CONNECT_PATH",
    "CREDENTIAL_PREFIX",
    "FATAL_CLOSE_CODES",
    "HELLO_TIMEOUT",
    "JOIN_TOKEN_PREFIX",
    "MAX_FRAME_BYTES",
    "METHODS",
    "SPOKE_LABEL",
    "FrameError",
    "box_from_wire",
    "box_to_wire",
    "check_secret",
    "check_spoke_name",
    "decode",
    "encode",
    "error_frame",
    "error_from",
    "exec_from_wire",
    "exec_to_wire",
    "hash_secret",
    "new_secret",
    "spec_from_wire",
    "spec_to_wire",
    "websocket_url",
]
