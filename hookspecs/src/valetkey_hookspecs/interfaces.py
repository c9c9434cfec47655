"""The interfaces plugins implement (stores, secret stores, sealers, box runtimes, notifiers,
credential providers) and the kernel facade plugins receive.

They are ``typing.Protocol`` classes: a plugin need not inherit from them, only match them; the
conformance kit (``valetkey_hookspecs.testing``) checks that an implementation behaves as written
here. Store and runtime methods are ``async``; secret stores and sealers are synchronous (their
work takes microseconds or is a local D-Bus call).
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .types import (
    ApiToken,
    AuditEntry,
    AuditEvent,
    AuthType,
    Box,
    BoxHookEvent,
    BoxHookResult,
    BoxSession,
    BoxSpec,
    Connection,
    ConnectionStatus,
    Connector,
    Credential,
    ExecResult,
    JoinToken,
    Notification,
    ProxiedResponse,
    ProxyExchange,
    ProxyRun,
    RelayAccessToken,
    RelayRecord,
    Sealed,
    Secret,
    Spoke,
    TransientRecord,
)

if TYPE_CHECKING:
    from .registry import ConnectorCatalog

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)

# =========================================================================== the store


class ConnectionRepo(Protocol):
    """Connections, always scoped by owner: ``owner=None`` is system access (scheduler, admin)."""

    async def create(self, connection: Connection) -> Connection:
        """Insert; ``Conflict`` if the id exists."""
        ...

    async def get(self, connection_id: str, owner: str | None = None) -> Connection:
        """``NotFound`` if missing or owned by someone else."""
        ...

    async def list(
        self,
        owner: str | None = None,
        *,
        connector: str | None = None,
        status: ConnectionStatus | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[Connection]:
        """Ordered by id; ``after`` is the last id of the previous page."""
        ...

    async def set_status(
        self, connection_id: str, status: ConnectionStatus, error: str | None = None
    ) -> Connection:
        """Change the status (and error text); ``NotFound`` if missing."""
        ...

    async def update(
        self,
        connection_id: str,
        owner: str | None = None,
        *,
        label: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Connection:
        """Change label / metadata (None leaves a field as it is)."""
        ...

    async def delete(self, connection_id: str, owner: str | None = None) -> None:
        """Delete the connection and its credential; ``NotFound`` if missing or foreign."""
        ...

    async def count(self, owner: str | None = None) -> int:
        """How many connections (of one owner, or all)."""
        ...


@dataclass(frozen=True, slots=True)
class Rewrap:
    """One re-wrapped data key for ``CredentialRepo.rewrap``.

    ``old_key_id`` and ``version`` are what was read: if the credential was replaced meanwhile
    (a refresh sealed new bytes), the new wrap belongs to the old ciphertext and must not land.
    """

    credential_id: str
    wrapped_key: bytes
    key_id: str
    old_key_id: str
    version: int


class CredentialRepo(Protocol):
    """Sealed credentials, one current credential per connection."""

    async def put(self, credential: Credential) -> Credential:
        """Insert or replace the connection's credential; the result has the stored version."""
        ...

    async def get(self, connection_id: str) -> Credential:
        """The connection's credential; ``NotFound`` if it has none."""
        ...

    async def get_with_connection(
        self, connection_id: str, owner: str | None = None
    ) -> tuple[Connection, Credential | None]:
        """The connection and its credential in one round trip (the vend hot path)."""
        ...

    async def replace(
        self,
        connection_id: str,
        sealed: Sealed,
        expires_at: datetime | None,
        *,
        expected_version: int | None = None,
    ) -> Credential:
        """Swap in new sealed bytes; ``Conflict`` if ``expected_version`` is stale."""
        ...

    async def due(self, before: datetime, limit: int) -> list[Credential]:
        """Credentials of ACTIVE connections expiring before ``before``, soonest first."""
        ...

    async def claim_due(
        self, before: datetime, limit: int, holder: str, ttl: float
    ) -> list[Credential]:
        """Like ``due``, but every credential returned is leased to ``holder`` for ``ttl``
        seconds in the same atomic step — the lease ``refresh:<connection id>`` of ``Leases``,
        the one a single-flight refresh takes — and credentials whose lease another holder
        has (unexpired) are left out. Several servers claiming at once get disjoint sets; a
        holder's own unexpired claims come back to it (renewed); claims of a crashed server
        are claimed by others once they expire. Release each with
        ``leases.release(f"refresh:{connection_id}", holder)``. ``InvalidInput`` for a ttl
        that is not positive.

        .. versionadded:: 0.2 (callers fall back to ``due`` on a store without it)
        """
        ...

    async def key_ids(self) -> dict[str, int]:
        """How many credentials are sealed under each key id."""
        ...

    async def not_under_key(
        self, key_id: str, limit: int, after: str | None = None
    ) -> list[Credential]:
        """Up to ``limit`` credentials whose data key is wrapped by another key than ``key_id``,
        ordered by credential id; ``after`` is the last id of the previous page."""
        ...

    async def rewrap(self, items: Sequence[Rewrap]) -> int:
        """Store new wrapped keys in one transaction, each only if the credential still has
        ``old_key_id`` and ``version`` (a rewrap leaves ``version`` as it is); returns how many
        were written."""
        ...

    async def delete(self, connection_id: str) -> None:
        """Remove the connection's credential (no error if it has none)."""
        ...


class AuditLog(Protocol):
    """Append-only, hash-chained (``valetkey_hookspecs.audit``)."""

    async def append(
        self,
        action: str,
        *,
        actor: str,
        owner: str | None = None,
        connection_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEvent:
        """Append atomically after the current head, computing ``prev_hash`` and ``hash`` with
        :func:`valetkey_hookspecs.audit.audit_hash` over the values as they will read back
        (``at`` in UTC, ``detail`` as it round-trips through JSON)."""
        ...

    async def append_many(self, entries: Sequence[AuditEntry]) -> list[AuditEvent]:
        """Append several events in ONE transaction, chained in order (group commit: many
        concurrent vends pay for one write)."""
        ...

    async def list(
        self,
        *,
        owner: str | None = None,
        connection_id: str | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        """Events in ``seq`` order."""
        ...


class Leases(Protocol):
    """Named, expiring locks shared by every process on one database (single-flight refresh)."""

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take the lease if free, expired or already held by ``holder`` (renewing it)."""
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give the lease back if ``holder`` holds it."""
        ...

    async def holder(self, name: str) -> str | None:
        """Who holds an unexpired lease, if anyone."""
        ...


class ApiTokenRepo(Protocol):
    """REST API bearer tokens (hashed)."""

    async def create(self, token: ApiToken) -> ApiToken:
        """Insert; ``Conflict`` if the id or hash exists."""
        ...

    async def find(self, token_hash: str) -> ApiToken:
        """By hash; ``NotFound`` if none."""
        ...

    async def list(self, owner: str | None = None) -> list[ApiToken]:
        """Tokens, oldest first."""
        ...

    async def touch(self, token_id: str, at: datetime) -> None:
        """Record a use."""
        ...

    async def delete(self, token_id: str, owner: str | None = None) -> None:
        """``NotFound`` if missing or foreign."""
        ...


class ProxyRunRepo(Protocol):
    """Proxy runs (grant names and policy; no credentials)."""

    async def put(self, run: ProxyRun) -> None:
        """Insert or replace."""
        ...

    async def get(self, run_id: str) -> ProxyRun:
        """``NotFound`` if missing."""
        ...

    async def list(self) -> list[ProxyRun]:
        """Oldest first."""
        ...

    async def delete(self, run_id: str) -> None:
        """No error if missing."""
        ...


class BoxSessionRepo(Protocol):
    """Box manager sessions."""

    async def put(self, session: BoxSession) -> None:
        """Insert or replace (by box id)."""
        ...

    async def get(self, box_id: str) -> BoxSession:
        """``NotFound`` if missing."""
        ...

    async def find_by_token(self, token_hash: str) -> BoxSession:
        """``NotFound`` if no session has this auth-page token."""
        ...

    async def list(self, *, spoke: str | None = None) -> list[BoxSession]:
        """Oldest first; ``spoke`` filters."""
        ...

    async def delete(self, box_id: str) -> None:
        """No error if missing."""
        ...


class TransientRepo(Protocol):
    """Short-lived records with an expiry: login flows, OAuth states, web sessions."""

    async def put(self, record: TransientRecord) -> None:
        """Insert or replace (by kind and key)."""
        ...

    async def get(self, kind: str, key: str) -> TransientRecord:
        """``NotFound`` if missing or expired."""
        ...

    async def take(self, kind: str, key: str) -> TransientRecord:
        """Get and delete in one step (single use); ``NotFound`` if missing, expired or taken."""
        ...

    async def delete(self, kind: str, key: str) -> None:
        """No error if missing."""
        ...

    async def purge_expired(self, now: datetime) -> int:
        """Delete every expired record; return how many."""
        ...


class SpokeRepo(Protocol):
    """Spokes of a hub and their one-time join tokens."""

    async def put(self, spoke: Spoke) -> None:
        """Insert or replace (by id); ``Conflict`` if another spoke has the name."""
        ...

    async def get(self, spoke_id: str) -> Spoke:
        """``NotFound`` if missing."""
        ...

    async def find_by_credential(self, credential_hash: str) -> Spoke:
        """``NotFound`` if no spoke has this credential."""
        ...

    async def list(self) -> builtins.list[Spoke]:
        """Ordered by name."""
        ...

    async def delete(self, spoke_id: str) -> None:
        """``NotFound`` if missing."""
        ...

    async def add_join_token(self, token: JoinToken) -> None:
        """Insert a join token."""
        ...

    async def consume_join_token(self, token_hash: str, now: datetime, used_by: str) -> JoinToken:
        """Mark a valid token used, atomically; ``NotFound`` if unknown, used or expired."""
        ...

    async def list_join_tokens(self) -> builtins.list[JoinToken]:
        """Oldest first."""
        ...

    async def revoke_join_token(self, token_id: str) -> None:
        """``NotFound`` if missing."""
        ...


class RelayRepo(Protocol):
    """Relays served by ``relay-server`` and their access tokens."""

    async def put(self, relay: RelayRecord) -> None:
        """Insert or replace."""
        ...

    async def get(self, relay_id: str) -> RelayRecord:
        """``NotFound`` if missing."""
        ...

    async def list(self) -> list[RelayRecord]:
        """Oldest first."""
        ...

    async def delete(self, relay_id: str) -> None:
        """Delete the relay and its access tokens; ``NotFound`` if missing."""
        ...

    async def add_access_token(self, token: RelayAccessToken) -> None:
        """Insert an access token."""
        ...

    async def find_access_token(self, relay_id: str, token_hash: str) -> RelayAccessToken:
        """``NotFound`` if unknown for this relay."""
        ...

    async def list_access_tokens(self, relay_id: str) -> builtins.list[RelayAccessToken]:
        """Oldest first."""
        ...

    async def delete_access_token(self, token_id: str) -> None:
        """``NotFound`` if missing."""
        ...


@runtime_checkable
class Store(Protocol):
    """Where valetkey keeps its state: one object with a repository per record type.

    ``open()`` creates or migrates the schema and must be called (the kernel does it) before any
    repository is used; ``close()`` releases connections.
    """

    connections: ConnectionRepo
    credentials: CredentialRepo
    audit: AuditLog
    leases: Leases
    api_tokens: ApiTokenRepo
    runs: ProxyRunRepo
    boxes: BoxSessionRepo
    transient: TransientRepo
    spokes: SpokeRepo
    relays: RelayRepo

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...

    async def schema_version(self) -> int:
        """The applied schema version."""
        ...

    async def flush(self) -> None:
        """Make every committed transaction durable (survive a power cut) before returning; the
        vault calls it before forgetting an old key."""
        ...


# =========================================================================== secrets and sealing


@runtime_checkable
class SecretStore(Protocol):
    """Small named secrets of valetkey itself (the KEK, machine tokens), e.g. the OS keyring."""

    @property
    def description(self) -> str:
        """Where values go, for people ("keyring SecretService", "encrypted files in ...")."""
        ...

    def get(self, key: str) -> str | None:
        """The value, or None if unset."""
        ...

    def set(self, key: str, value: str) -> None:
        """Create or overwrite."""
        ...

    def delete(self, key: str) -> None:
        """Remove; a missing entry is not an error."""
        ...


@runtime_checkable
class Sealer(Protocol):
    """Envelope encryption of records; ``aad`` is the record's id."""

    def current_key_id(self) -> str:
        """Id of the current key-encryption key (new seals use it), or ``""`` while the sealer
        has no key yet (a new vault before its first seal). A method, not a property: finding it
        may load or re-read the key ring, but never creates a key."""
        ...

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        """Encrypt under a fresh data key wrapped by the current KEK; the first seal of a new
        vault may create the first KEK."""
        ...

    def open(self, sealed: Sealed, aad: bytes) -> bytes:
        """Decrypt; ``SealError`` for an unknown key id, a tampered wrapped key or ciphertext."""
        ...

    def rewrap(self, sealed: Sealed, aad: bytes) -> Sealed:
        """The same ciphertext with its data key wrapped by the current KEK."""
        ...

    def key_ids(self) -> list[str]:
        """Ids of every KEK this sealer can open with, current first; ``[]`` while it has no key
        yet. Never creates a key."""
        ...

    def rotate_kek(self) -> str:
        """Make a new KEK current (the first one on a vault without keys), keeping old ones for
        opening; return its id."""
        ...

    def retire_keys(self, in_use: Sequence[str], min_age: float = 0.0) -> list[str]:
        """Forget KEKs that are not current, that no record uses (``in_use``) and that stopped
        being current at least ``min_age`` seconds ago — long enough for every running process
        to have picked up the new current key; return their ids. With no key yet, retire
        nothing and create nothing."""
        ...


# =========================================================================== boxes


@runtime_checkable
class BoxRuntime(Protocol):
    """A container engine that runs boxes. Only containers it labelled as managed are visible."""

    name: str

    async def create(self, spec: BoxSpec) -> Box:
        """Create and start; ``InvalidInput`` for a bad id or file, ``Conflict`` for a duplicate
        or when the runtime's ``max_boxes`` is reached — all raised before a container exists
        (``valetkey_hookspecs.boxes.check_box_id``). The box id is the container's hostname;
        files are in place, with their mode, uid and gid, before the main process starts."""
        ...

    async def get(self, box_id: str) -> Box:
        """``NotFound`` if no managed box has this id."""
        ...

    async def list(self) -> list[Box]:
        """Every managed box."""
        ...

    async def exec(self, box_id: str, command: str, *, timeout: float | None = None) -> ExecResult:
        """Run ``sh -c command``; each stream is capped (``truncated`` says so). A command still
        running after ``timeout`` seconds (None: the runtime's default) is a result too: exit
        code 124 and a ``... [timed out after Ns]`` line ending stderr (see
        ``valetkey_hookspecs.boxes``)."""
        ...

    async def logs(self, box_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the main process's output, ANSI stripped."""
        ...

    async def write_stdin(self, box_id: str, data: bytes) -> None:
        """Write to the main (login) process's standard input."""
        ...

    async def destroy(self, box_id: str) -> None:
        """Stop (SIGTERM, then kill) and remove; ``NotFound`` if no managed box has this id."""
        ...

    async def is_alive(self, container_id: str) -> bool:
        """False when the container is confirmed gone or stopped; raise on a transient error
        (``RuntimeUnavailable`` when the engine cannot be reached)."""
        ...

    async def close(self) -> None:
        """Release clients; idempotent."""
        ...


class BoxHook(Protocol):
    """Runs around a box's life (register with ``valetkey_register_box_hooks``): ``on_create``
    before the container exists (it may return files to inject and state to keep),
    ``on_destroy`` after the box is gone or when its creation failed after ``on_create`` ran."""

    async def on_create(self, event: BoxHookEvent) -> BoxHookResult:
        """Prepare the box; raising aborts the creation (destroy hooks that already ran their
        create are replayed)."""
        ...

    async def on_destroy(self, event: BoxHookEvent, state: Mapping[str, Any]) -> None:
        """Clean up with the state ``on_create`` returned; a failure is logged, not fatal."""
        ...


# =========================================================================== notifiers, providers


@runtime_checkable
class Notifier(Protocol):
    """Tells people about events; a failure is logged by the kernel, never raised to callers."""

    name: str

    async def notify(self, notification: Notification) -> None:
        """Deliver one notification (retrying as the notifier sees fit). A notifier holding
        connections may define ``async aclose()``; the kernel calls it when it closes."""
        ...


@dataclass(frozen=True, slots=True)
class AcquireRequest:
    """What a credential provider is asked to obtain for a connection."""

    owner: str
    connector: Connector
    scopes: tuple[str, ...] = ()
    interactive: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class CredentialProvider(Protocol):
    """Obtains and refreshes credentials for connectors of some auth types (OAuth flows, keys)."""

    name: str
    auth_types: tuple[AuthType, ...]

    async def acquire(self, request: AcquireRequest) -> Secret:
        """Run the flow (browser, device code, prompt) and return the new secret."""
        ...

    async def refresh(self, connector: Connector, secret: Secret) -> Secret:
        """A fresh secret; ``NeedsReauth`` when the grant is dead."""
        ...


@dataclass(frozen=True, slots=True, repr=False)
class AuthorizationRequest:
    """An authorization-code request ready to send a person to: the URL, and what the callback
    must be checked against and exchanged with. ``verifier`` is a secret (PKCE)."""

    url: str
    state: str
    verifier: str | None
    redirect_uri: str
    scopes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"AuthorizationRequest(url={self.url!r}, redirect_uri={self.redirect_uri!r})"


@dataclass(frozen=True, slots=True, repr=False)
class DeviceAuthorization:
    """An RFC 8628 device authorization: show ``user_code`` and ``verification_uri`` to a
    person, then poll with ``device_code`` (a secret) every ``interval`` seconds."""

    device_code: str
    user_code: str
    verification_uri: str
    expires_in: float
    interval: float = 5.0
    verification_uri_complete: str | None = None

    def __repr__(self) -> str:
        return (
            f"DeviceAuthorization(user_code={self.user_code!r}, "
            f"verification_uri={self.verification_uri!r})"
        )


@runtime_checkable
class OAuthFlows(Protocol):
    """The OAuth 2.0 building blocks a credential provider for ``AuthType.OAUTH2`` offers, so the
    broker's REST API and CLI can run flows whose redirect or display they own.

    Every call that reaches a provider honours the connector's rate profile (``RateLimited``,
    nothing sent, when over it) and maps ``invalid_grant`` to ``NeedsReauth``.
    """

    def authorization_request(
        self, connector: Connector, redirect_uri: str, scopes: Sequence[str] = ()
    ) -> AuthorizationRequest:
        """A PKCE (S256) authorization URL with a fresh state."""
        ...

    async def exchange_code(
        self, connector: Connector, request: AuthorizationRequest, code: str
    ) -> Secret:
        """Exchange an authorization code (after the caller checked the state)."""
        ...

    async def start_device(
        self, connector: Connector, scopes: Sequence[str] = ()
    ) -> DeviceAuthorization:
        """Start a device authorization (RFC 8628)."""
        ...

    async def poll_device(
        self,
        connector: Connector,
        device: DeviceAuthorization,
        on_wait: Callable[[float], None] | None = None,
    ) -> Secret:
        """Poll until approved; ``authorization_pending`` waits, ``slow_down`` adds 5 s,
        ``expired_token`` / ``access_denied`` raise ``Unauthorized`` with a clear message.
        ``on_wait(seconds_left)`` is called before each wait (progress)."""
        ...

    async def client_credentials(self, connector: Connector, scopes: Sequence[str] = ()) -> Secret:
        """A token for the client itself (RFC 6749 section 4.4)."""
        ...


# =========================================================================== the kernel facade


class KernelAPI(Protocol):
    """What plugins may use of the kernel (``valetkey.kernel.Kernel`` implements it)."""

    @property
    def home(self) -> Path:
        """``$VALETKEY_HOME``: 0700, holds state files."""
        ...

    @property
    def store(self) -> Store:
        """The selected store (opened by ``async with kernel``)."""
        ...

    @property
    def secret_store(self) -> SecretStore:
        """The selected secret store."""
        ...

    @property
    def sealer(self) -> Sealer:
        """The selected sealer."""
        ...

    @property
    def connectors(self) -> ConnectorCatalog:
        """Every registered connector."""
        ...

    def runtime(self, name: str | None = None) -> BoxRuntime:
        """A box runtime by name, or the selected one."""
        ...

    @property
    def broker(self) -> CredentialBroker:
        """The selected credential broker (one per kernel)."""
        ...

    def response_transformer(self, kind: str) -> ResponseTransformer:
        """A registered response transformer by kind (``NotFound`` names the known ones)."""
        ...

    @property
    def box_hooks(self) -> list[tuple[str, BoxHook]]:
        """Every enabled box lifecycle hook with its name, in name order."""
        ...

    def credential_provider(self, name: str) -> CredentialProvider:
        """A credential provider by name."""
        ...

    def plugin_config(self, plugin: str) -> Any:
        """A plugin's validated config object (None when it declares no schema)."""
        ...

    async def notify(self, notification: Notification) -> None:
        """Start delivering to every enabled notifier and return at once; failures are logged,
        not raised. Closing the kernel waits for deliveries in flight."""
        ...

    async def drain_notifications(self, timeout: float = 60.0) -> None:
        """Wait for notification deliveries in flight (at most ``timeout`` seconds)."""
        ...


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a factory registered by a plugin is called with."""

    #: the plugin's name (its entry point name, e.g. ``store-sqlite``)
    plugin: str
    #: the plugin's validated ``[plugin.<name>]`` table (None when it declares no schema)
    config: Any
    kernel: KernelAPI

    @property
    def home(self) -> Path:
        """The kernel's state folder."""
        return self.kernel.home


Factory = Callable[[PluginContext], T_co]
ServiceFn = Callable[[], Awaitable[None]]


class CredentialBroker(Protocol):
    """The broker as other plugins see it (the proxy, boxes): an owner's connections and their
    current credentials. ``kernel.broker`` is the selected one, shared by everything in a process
    so concurrent vends of a connection share one in-flight refresh."""

    async def vend(
        self, owner: str, connection_id: str, *, actor: str = "api", audit: bool = True
    ) -> Secret:
        """The connection's current secret, refreshed first when close to expiry. Each vend is
        audited unless ``audit=False`` (a caller that records every use itself, such as the
        proxy's request log, and audits the grant once).

        :raises NotFound: no such connection for this owner, or it has no credential yet.
        :raises Revoked: the connection was revoked.
        :raises NeedsReauth: the provider refused the refresh; a person must reconnect.
        """
        ...

    async def get_connection(self, owner: str, connection_id: str) -> Connection:
        """Owner-scoped: a foreign id is not found."""
        ...

    async def list_connections(self, owner: str) -> list[Connection]:
        """The owner's connections, every status."""
        ...


class ResponseTransformer(Protocol):
    """Rewrites an upstream response before the proxy hands it to an agent (``response-scrub``
    puts placeholders back where the real token appears). Registered by kind with
    ``valetkey_register_response_transformers``; a run names the kinds it wants per host."""

    #: responses whose body is larger than this pass through untouched (they are streamed)
    max_body: int

    def transform(self, exchange: ProxyExchange, response: ProxiedResponse) -> ProxiedResponse:
        """Return the response to send (``response`` itself when nothing changes)."""
        ...


class RegisterFactory(Protocol[T_contra]):
    """``register(name, factory, *, default=False)`` passed to driver registry hooks."""

    def __call__(
        self, name: str, factory: Callable[[PluginContext], T_contra], *, default: bool = False
    ) -> None: ...


class RegisterConnector(Protocol):
    """``register(connector)``."""

    def __call__(self, connector: Connector) -> None: ...


class RegisterRoute(Protocol):
    """``register(prefix, asgi_app)``: mount an ASGI app under a prefix of ``valetkey serve``."""

    def __call__(self, prefix: str, app: Any) -> None: ...


class RegisterMcpTool(Protocol):
    """``register(fn, *, name=None, description=None)``: an async function becomes an MCP tool."""

    def __call__(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None: ...


class RegisterService(Protocol):
    """``register(name, fn)``: ``await fn()`` runs until cancelled at shutdown."""

    def __call__(self, name: str, fn: ServiceFn) -> None: ...
