"""Domain types of valetkey: plain, immutable dataclasses shared by the kernel and plugins.

Times are timezone-aware UTC ``datetime`` values. Anything secret lives in ``Secret`` (whose repr
and str never show a value) or in ``Sealed`` bytes (which only a sealer can open).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- connectors


class AuthType(StrEnum):
    """How a connector's credential is obtained."""

    OAUTH2 = "oauth2"
    API_KEY = "api_key"
    BASIC = "basic"


@dataclass(frozen=True, slots=True)
class AuthSpec:
    """How to obtain and refresh a connector's credential."""

    type: AuthType
    authorize_url: str | None = None
    token_url: str | None = None
    device_authorization_url: str | None = None
    revocation_url: str | None = None
    scopes: tuple[str, ...] = ()
    pkce: bool = True
    #: how the client authenticates at the token endpoint: "basic", "post" or "none" (public client)
    client_auth: str = "post"
    extra_authorize_params: Mapping[str, str] = field(default_factory=dict)
    #: how scopes are joined in requests: RFC 6749 says a space; Slack, Linear use a comma
    scope_separator: str = " "


@dataclass(frozen=True, slots=True)
class Injection:
    """How the proxy adds a connector's credential to an agent's request."""

    #: host patterns: ``api.github.com``, ``*.github.com`` (sub-domains only), ``host:8443``
    hosts: tuple[str, ...] = ()
    header: str = "Authorization"
    #: ``{token}`` is replaced by the access token or API key, ``{secret}`` by the API secret
    format: str = "Bearer {token}"
    remove_headers: tuple[str, ...] = ()
    #: extra headers; values may place ``{token}`` / ``{secret}`` too (two-header APIs such as
    #: ``APCA-API-KEY-ID`` + ``APCA-API-SECRET-KEY``), merged with the client's value comma-joined
    add_headers: Mapping[str, str] = field(default_factory=dict)
    #: name of the environment variable that carries the placeholder inside a run (``GITHUB_TOKEN``)
    env_var: str | None = None


@dataclass(frozen=True, slots=True)
class RateProfile:
    """At most ``requests`` calls to the provider per ``per_seconds`` window."""

    requests: int
    per_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class Connector:
    """A provider that valetkey knows how to connect to (GitHub, OpenAI, ...)."""

    slug: str
    name: str
    auth: AuthSpec
    injection: Injection | None = None
    rate: RateProfile | None = None
    description: str = ""
    docs_url: str | None = None


# --------------------------------------------------------------------------- connections


class ConnectionStatus(StrEnum):
    """Life cycle of a connection."""

    ACTIVE = "ACTIVE"
    NEEDS_REAUTH = "NEEDS_REAUTH"
    REVOKED = "REVOKED"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class Connection:
    """One owner's link to one connector account."""

    id: str
    owner: str
    connector: str
    status: ConnectionStatus = ConnectionStatus.ACTIVE
    label: str = ""
    error: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    metadata: Mapping[str, Any] = field(default_factory=dict)


class CredentialKind(StrEnum):
    """What a sealed credential holds."""

    OAUTH2 = "oauth2"
    API_KEY = "api_key"
    BASIC = "basic"


@dataclass(frozen=True, slots=True)
class Sealed:
    """Envelope-encrypted bytes: ciphertext, the data key wrapped by a KEK, and that KEK's id."""

    ciphertext: bytes
    wrapped_key: bytes
    key_id: str

    def __repr__(self) -> str:
        return (
            f"Sealed(key_id={self.key_id!r}, ciphertext=<{len(self.ciphertext)} bytes>, "
            f"wrapped_key=<{len(self.wrapped_key)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class Credential:
    """The sealed credential of a connection (one current credential per connection).

    ``id`` is the associated data of the seal: a sealed blob moved to another record fails to open.
    ``version`` grows by one with every replacement (optimistic concurrency for refresh).
    """

    id: str
    connection_id: str
    kind: CredentialKind
    sealed: Sealed
    expires_at: datetime | None = None
    version: int = 1
    updated_at: datetime = field(default_factory=utcnow)


_SECRET_FIELDS = ("access_token", "refresh_token", "api_key", "api_secret", "id_token")


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """Plaintext credential material. Its repr and str name the fields set, never a value."""

    access_token: str | None = None
    refresh_token: str | None = None
    api_key: str | None = None
    api_secret: str | None = None
    id_token: str | None = None
    token_type: str | None = None
    scopes: tuple[str, ...] = ()
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        present = [name for name in _SECRET_FIELDS if getattr(self, name)]
        expiry = f", expires_at={self.expires_at.isoformat()}" if self.expires_at else ""
        return f"Secret(<redacted: {', '.join(present) or 'empty'}>{expiry})"

    __str__ = __repr__

    @property
    def token(self) -> str | None:
        """The value a request carries: the access token, else the API key."""
        return self.access_token or self.api_key

    def values(self) -> tuple[str, ...]:
        """Every secret value set (for redaction and for "not in this file" checks)."""
        return tuple(
            v
            for v in (
                self.access_token,
                self.refresh_token,
                self.api_key,
                self.api_secret,
                self.id_token,
            )
            if v
        )

    def with_changes(self, **changes: Any) -> Secret:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def to_bytes(self) -> bytes:
        """Serialise for sealing (JSON, fields that are set only)."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value in (None, ()):
                continue
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Secret:
        """Inverse of ``to_bytes``."""
        data = json.loads(raw)
        if "expires_at" in data:
            data["expires_at"] = datetime.fromisoformat(data["expires_at"])
        if "scopes" in data:
            data["scopes"] = tuple(data["scopes"])
        return cls(**data)


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One line of the hash-chained audit log. ``detail`` never holds a secret."""

    seq: int
    at: datetime
    action: str
    actor: str
    owner: str | None = None
    connection_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit event to append (``AuditLog.append_many``); the store assigns seq and hashes."""

    action: str
    actor: str
    owner: str | None = None
    connection_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A bearer token for the REST API, bound to one owner; only its SHA-256 is stored."""

    id: str
    owner: str
    token_hash: str
    name: str = ""
    created_at: datetime = field(default_factory=utcnow)
    last_used_at: datetime | None = None


# --------------------------------------------------------------------------- proxy runs


@dataclass(frozen=True, slots=True)
class ProxyRun:
    """An agent run registered with the proxy: grant names and policy, never credentials."""

    id: str
    owner: str
    grants: tuple[str, ...] = ()
    policy: Mapping[str, Any] = field(default_factory=dict)
    container_id: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProxyExchange:
    """One request the proxy forwarded for a run, as response transformers see it."""

    run_id: str
    method: str
    host: str
    path: str
    #: real value → placeholder, for every credential injected into this request's run and host;
    #: a transformer must never put a real value into a response
    scrub: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class ProxiedResponse:
    """A buffered upstream response (status, headers in order, whole body)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False, default=b"")

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


# --------------------------------------------------------------------------- boxes


class BoxStatus(StrEnum):
    """A box session's state as the box manager sees it."""

    PENDING = "pending"
    READY = "ready"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class BoxFile:
    """A file injected into a box before it starts."""

    path: str
    content: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    def __repr__(self) -> str:
        return f"BoxFile(path={self.path!r}, <{len(self.content)} bytes>, mode={self.mode:o})"


@dataclass(frozen=True, slots=True)
class BoxSpec:
    """What a box runtime is asked to create. ``None`` limits and network mean the runtime's
    configured default (4096 MiB, 2 CPUs, 4096 pids unless its plugin config says otherwise)."""

    box_id: str
    image: str
    description: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    files: tuple[BoxFile, ...] = ()
    command: tuple[str, ...] | None = None
    memory_mib: int | None = None
    cpus: float | None = None
    pids: int | None = None
    network: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    stdin_open: bool = True

    def __repr__(self) -> str:  # env values may be tokens or placeholders: show names only
        return (
            f"BoxSpec(box_id={self.box_id!r}, image={self.image!r}, env=<{', '.join(self.env)}>, "
            f"files={len(self.files)}, memory_mib={self.memory_mib}, cpus={self.cpus}, "
            f"pids={self.pids}, network={self.network!r})"
        )


@dataclass(frozen=True, slots=True)
class Box:
    """A container managed by valetkey, as a runtime reports it."""

    id: str
    runtime: str
    image: str
    state: str
    container_id: str | None = None
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    spoke: str | None = None


@dataclass(frozen=True, slots=True)
class ExecResult:
    """Output of a command run in a box. A non-zero exit code is a result, not an error."""

    stdout: str
    stderr: str
    exit_code: int
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class BoxHookEvent:
    """What box lifecycle hooks are told about a box being created or destroyed."""

    box_id: str
    image: str
    runtime: str
    description: str = ""
    spoke: str | None = None


@dataclass(frozen=True, slots=True)
class BoxHookResult:
    """What a create hook returns: files to inject before the box starts, and opaque state that
    is persisted with the box and replayed to the destroy hooks (also when the create fails
    after the hook ran). State is stored as JSON in plaintext: never put a secret in it."""

    files: tuple[BoxFile, ...] = ()
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BoxSession:
    """The box manager's record of a box: status, auth-page token (hashed), hook state."""

    box_id: str
    token_hash: str
    image: str
    runtime: str
    status: BoxStatus = BoxStatus.PENDING
    description: str = ""
    spoke: str | None = None
    error: str | None = None
    session_url: str | None = None
    hook_state: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


# --------------------------------------------------------------------------- transient records


@dataclass(frozen=True, slots=True)
class TransientRecord:
    """A short-lived record (login flow state, web session, OAuth state) with an expiry.

    ``kind`` separates name spaces (``"oauth-state"``, ``"web-session"``); ``sealed`` holds what
    must not be stored in plaintext (a PKCE verifier, say).
    """

    kind: str
    key: str
    expires_at: datetime
    owner: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    sealed: Sealed | None = None
    created_at: datetime = field(default_factory=utcnow)


# --------------------------------------------------------------------------- clustering and relay


@dataclass(frozen=True, slots=True)
class Spoke:
    """A host that runs boxes for a hub; its long-lived credential is stored hashed."""

    id: str
    name: str
    credential_hash: str
    created_at: datetime = field(default_factory=utcnow)
    last_seen_at: datetime | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A one-time token a spoke enrolls with; only its SHA-256 is stored."""

    id: str
    token_hash: str
    expires_at: datetime
    created_at: datetime = field(default_factory=utcnow)
    used_at: datetime | None = None
    used_by: str | None = None


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """A relay served by ``relay-server``: its machine token is stored hashed."""

    id: str
    machine_token_hash: str
    owner: str = ""
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class RelayAccessToken:
    """A token a public caller presents to a relay's MCP endpoint (stored hashed)."""

    id: str
    relay_id: str
    token_hash: str
    name: str = ""
    created_at: datetime = field(default_factory=utcnow)


# --------------------------------------------------------------------------- notifications


@dataclass(frozen=True, slots=True)
class Notification:
    """An event worth telling a person about (re-auth needed, refresh failing, ...)."""

    kind: str
    message: str
    owner: str | None = None
    connection_id: str | None = None
    connector: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)


__all__ = [
    "ApiToken",
    "AuditEntry",
    "AuditEvent",
    "AuthSpec",
    "AuthType",
    "Box",
    "BoxFile",
    "BoxSession",
    "BoxSpec",
    "BoxStatus",
    "Connection",
    "ConnectionStatus",
    "Connector",
    "Credential",
    "CredentialKind",
    "ExecResult",
    "Injection",
    "JoinToken",
    "Notification",
    "ProxyRun",
    "RateProfile",
    "RelayAccessToken",
    "RelayRecord",
    "Sealed",
    "Secret",
    "Spoke",
    "TransientRecord",
    "utcnow",
]
