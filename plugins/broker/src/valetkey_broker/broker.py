"""The token lifecycle (Conduit's usecase, re-designed): connections per owner, credentials sealed
by the kernel's sealer, vend with refresh-on-read, single-flight refresh, refresh-ahead, re-auth.

Vend is the hot path: one store read (connection and credential together), one decrypt, one audit
append. A credential within ``refresh_lead`` of expiry is refreshed first, once: concurrent vends
in this process share one in-flight refresh, and processes sharing a database take a lease row
(``refresh:<connection id>``) so only one of them calls the provider; the others wait for the
credential's version to move and read the fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from valetkey_hookspecs import (
    AuditEntry,
    AuthType,
    Connection,
    ConnectionStatus,
    Connector,
    Credential,
    CredentialKind,
    CredentialProvider,
    DeviceAuthorization,
    InvalidInput,
    KernelAPI,
    NeedsReauth,
    NotFound,
    Notification,
    RateLimited,
    Revoked,
    Secret,
    Store,
    ValetkeyError,
    utcnow,
)
from valetkey_hookspecs.redaction import register_secret

from .auditbatch import AuditBatcher
from .config import BrokerConfig
from .ids import check_owner, credential_id, new_id, process_id

log = logging.getLogger("valetkey.broker")

#: credentials a refresh-ahead pass claims at a time: a claimed credential's lease makes a vend
#: on another server wait for this one's refresh, so claims stay a few refreshes deep
CLAIM_CHUNK = 10


@dataclass
class RefreshReport:
    """What one refresh-ahead pass did."""

    refreshed: list[str] = field(default_factory=list)
    rate_limited: list[str] = field(default_factory=list)
    needs_reauth: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        """For ``--json`` output."""
        return {
            "refreshed": self.refreshed,
            "rate_limited": self.rate_limited,
            "needs_reauth": self.needs_reauth,
            "failed": self.failed,
            "skipped": self.skipped,
        }


class Broker:
    """Connections and their credentials, for one kernel (one store, one sealer)."""

    def __init__(
        self,
        kernel: KernelAPI,
        config: BrokerConfig | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        background: bool = False,
    ) -> None:
        """:param background: this broker lives in a long-running server, so a re-auth may
        start a device login and complete it in the background (a CLI process would exit)."""
        self._kernel = kernel
        self._background = background
        self._tasks: set[asyncio.Task[None]] = set()
        self.config = config or BrokerConfig()
        self._clock = clock
        self._holder = process_id()
        self._inflight: dict[str, asyncio.Future[Secret]] = {}
        self._audit = AuditBatcher(lambda: self._kernel.store)
        self._remembered: set[tuple[str, int]] = set()
        self._cooldown: dict[str, float] = {}

    @property
    def store(self) -> Store:
        """The kernel's store (opened by the caller's ``async with kernel``)."""
        return self._kernel.store

    # ------------------------------------------------------------------ connections

    async def create_connection(
        self, owner: str, connector: str, *, label: str = "", actor: str = "cli"
    ) -> Connection:
        """A new ACTIVE connection (without a credential yet) for a known connector."""
        check_owner(owner)
        found = self._kernel.connectors.get(connector)  # NotFound for an unknown slug
        conn = await self.store.connections.create(
            Connection(id=new_id("conn"), owner=owner, connector=found.slug, label=label)
        )
        await self.store.audit.append(
            "connection.create",
            actor=actor,
            owner=owner,
            connection_id=conn.id,
            detail={"connector": found.slug},
        )
        return conn

    async def get_connection(self, owner: str, connection_id: str) -> Connection:
        """Owner-scoped: a foreign id is not found."""
        return await self.store.connections.get(connection_id, check_owner(owner))

    async def list_connections(self, owner: str) -> list[Connection]:
        """The owner's connections."""
        return await self.store.connections.list(check_owner(owner))

    async def store_secret(
        self,
        owner: str,
        connection_id: str,
        secret: Secret,
        *,
        actor: str = "cli",
        kind: CredentialKind | None = None,
    ) -> Credential:
        """Seal ``secret`` as the connection's credential and make the connection ACTIVE."""
        conn = await self.get_connection(owner, connection_id)
        if conn.status is ConnectionStatus.REVOKED:
            raise Revoked(f"connection {conn.id} is revoked; create a new one")
        if not secret.token:
            raise InvalidInput("a credential needs an access token or an API key")
        connector = self._kernel.connectors.get(conn.connector)
        kind = kind or _kind_for(connector, secret)
        _remember(secret)
        cred_id = credential_id(conn.id)
        sealed = self._kernel.sealer.seal(secret.to_bytes(), cred_id.encode())
        cred = await self.store.credentials.put(
            Credential(
                id=cred_id,
                connection_id=conn.id,
                kind=kind,
                sealed=sealed,
                expires_at=secret.expires_at,
            )
        )
        if conn.status is not ConnectionStatus.ACTIVE:
            await self.store.connections.set_status(conn.id, ConnectionStatus.ACTIVE)
        await self.store.audit.append(
            "credential.store",
            actor=actor,
            owner=owner,
            connection_id=conn.id,
            detail={"kind": kind.value, "version": cred.version},
        )
        return cred

    async def revoke(self, owner: str, connection_id: str, *, actor: str = "cli") -> Connection:
        """Stop vending; the credential stays sealed until the connection is deleted."""
        await self.get_connection(owner, connection_id)
        conn = await self.store.connections.set_status(connection_id, ConnectionStatus.REVOKED)
        await self.store.audit.append(
            "connection.revoke", actor=actor, owner=owner, connection_id=connection_id
        )
        return conn

    async def delete(self, owner: str, connection_id: str, *, actor: str = "cli") -> None:
        """Delete the connection and its sealed credential."""
        await self.store.connections.delete(connection_id, check_owner(owner))
        await self.store.audit.append(
            "connection.delete", actor=actor, owner=owner, connection_id=connection_id
        )

    # ------------------------------------------------------------------ vend

    async def vend(
        self, owner: str, connection_id: str, *, actor: str = "api", audit: bool = True
    ) -> Secret:
        """The connection's current secret, refreshed first when it is close to expiry.

        ``audit=False`` is for callers that keep their own per-use record (the proxy's request
        log) and audit the grant once; refreshes and re-auth are audited either way."""
        conn, cred = await self.store.credentials.get_with_connection(connection_id, owner)
        _check_status(conn)
        if cred is None:
            raise NotFound(
                f"connection {conn.id} has no credential yet: connect it with "
                f"'valetkey connect {conn.connector}' or 'valetkey key add {conn.connector}'"
            )
        secret = self._open(cred)
        if self._due(cred, secret):
            secret = await self._refresh_once(conn, cred, secret, actor)
        elif _expired(cred, self._clock()) and not secret.refresh_token:
            await self._needs_reauth(
                conn, "the access token expired and there is no refresh token", actor
            )
        if audit:
            await self._audit.append(AuditEntry("vend", actor, owner, conn.id))
        return secret

    async def refresh(self, owner: str, connection_id: str, *, actor: str = "cli") -> Secret:
        """Refresh now, whatever the expiry (still single-flight)."""
        conn, cred = await self.store.credentials.get_with_connection(connection_id, owner)
        _check_status(conn)
        if cred is None:
            raise NotFound(f"connection {conn.id} has no credential to refresh")
        secret = self._open(cred)
        if not secret.refresh_token:
            raise InvalidInput(
                f"connection {conn.id} has no refresh token (API keys never refresh)"
            )
        return await self._refresh_once(conn, cred, secret, actor, force=True)

    async def refresh_due(
        self, *, limit: int | None = None, actor: str = "scheduler"
    ) -> RefreshReport:
        """Refresh credentials of ACTIVE connections that expire within the lead, soonest first.

        On a store with ``credentials.claim_due`` (every bundled store), work is claimed a few
        credentials at a time under their refresh leases, so several servers on one database
        refresh disjoint credentials and take over a crashed server's claims once its leases
        expire; otherwise the ``due`` list is walked and the lease of each refresh keeps it
        single-flight. A credential that failed recently is skipped for a few minutes so it
        does not block the queue; a rate-limited provider is left for the next pass.
        """
        report = RefreshReport()
        now_mono = time.monotonic()
        self._cooldown = {k: t for k, t in self._cooldown.items() if t > now_mono}
        batch = limit or self.config.batch_size
        before = self._clock() + timedelta(seconds=self.config.refresh_lead)
        claim = getattr(self.store.credentials, "claim_due", None)
        if claim is None:
            due = await self.store.credentials.due(before, batch + len(self._cooldown))
            for cred in due:
                if _handled(report) >= batch:
                    break
                await self._refresh_due_one(cred, report, actor, now_mono)
            return report
        seen: set[str] = set()
        while _handled(report) < batch:
            want = min(CLAIM_CHUNK, batch - _handled(report))
            chunk: list[Credential] = await claim(
                before, want + len(seen), self._holder, self.config.lease_ttl
            )
            new = [cred for cred in chunk if cred.connection_id not in seen]
            for cred in chunk:
                if cred.connection_id in seen:  # skipped earlier in this pass: not ours to keep
                    await self.store.leases.release(f"refresh:{cred.connection_id}", self._holder)
            if not new:
                break
            for index, cred in enumerate(new):
                if _handled(report) >= batch:
                    for rest in new[index:]:
                        await self.store.leases.release(
                            f"refresh:{rest.connection_id}", self._holder
                        )
                    break
                seen.add(cred.connection_id)
                if not await self._refresh_due_one(cred, report, actor, now_mono):
                    await self.store.leases.release(f"refresh:{cred.connection_id}", self._holder)
        return report

    async def _refresh_due_one(
        self, cred: Credential, report: RefreshReport, actor: str, now_mono: float
    ) -> bool:
        """Refresh one due credential into ``report``; False when it was not attempted (its
        claim is then the caller's to release)."""
        if cred.connection_id in self._cooldown:
            report.skipped.append(cred.connection_id)
            return False
        try:
            conn = await self.store.connections.get(cred.connection_id)
            secret = self._open(cred)
            if not secret.refresh_token:
                report.skipped.append(conn.id)
                return False
            await self._refresh_once(conn, cred, secret, actor)
            report.refreshed.append(conn.id)
        except RateLimited:
            report.rate_limited.append(cred.connection_id)
        except NeedsReauth:
            report.needs_reauth.append(cred.connection_id)
        except ValetkeyError as exc:
            log.warning("refresh of %s failed: %s", cred.connection_id, exc)
            report.failed.append(cred.connection_id)
            self._cooldown[cred.connection_id] = now_mono + 300
            return False
        return True

    # ------------------------------------------------------------------ internals

    def _open(self, cred: Credential) -> Secret:
        secret = Secret.from_bytes(self._kernel.sealer.open(cred.sealed, cred.id.encode()))
        seen = (cred.id, cred.version)
        if seen not in self._remembered:  # each version's values once, not on every vend
            if len(self._remembered) > 100_000:
                self._remembered.clear()
            self._remembered.add(seen)
            _remember(secret)
        return secret

    def _due(self, cred: Credential, secret: Secret) -> bool:
        if cred.expires_at is None or not secret.refresh_token:
            return False
        return cred.expires_at - self._clock() <= timedelta(seconds=self.config.refresh_lead)

    async def _refresh_once(
        self, conn: Connection, cred: Credential, secret: Secret, actor: str, force: bool = False
    ) -> Secret:
        """In-process single flight: concurrent callers share one refresh of a connection."""
        running = self._inflight.get(conn.id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Secret] = asyncio.get_running_loop().create_future()
        self._inflight[conn.id] = future
        try:
            result = await self._refresh_with_lease(conn, cred, secret, actor, force)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # the caller re-raises it; waiters get it from the future
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[conn.id]

    async def _refresh_with_lease(
        self, conn: Connection, cred: Credential, secret: Secret, actor: str, force: bool
    ) -> Secret:
        """Cross-process single flight through a lease row; others wait for the new version."""
        lease = f"refresh:{conn.id}"
        leases = self.store.leases
        deadline = time.monotonic() + self.config.refresh_wait
        pause = 0.02
        while True:
            if await leases.acquire(lease, self._holder, self.config.lease_ttl):
                try:
                    latest_conn, latest = await self.store.credentials.get_with_connection(conn.id)
                    _check_status(latest_conn)
                    if latest is not None and latest.version != cred.version:
                        fresh = self._open(latest)
                        if force or not _expired(latest, self._clock()):
                            return fresh  # another process refreshed while we waited
                        cred, secret = latest, fresh
                    return await self._call_provider(
                        latest_conn, cred, secret, actor, tolerate=not force
                    )
                finally:
                    await leases.release(lease, self._holder)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
            latest_conn, latest = await self.store.credentials.get_with_connection(conn.id)
            _check_status(latest_conn)
            if latest is not None and latest.version != cred.version:
                fresh = self._open(latest)
                if force or not _expired(latest, self._clock()):
                    return fresh  # just refreshed elsewhere: do not refresh it again
            if time.monotonic() > deadline:
                if not _expired(cred, self._clock()):
                    return secret  # still valid: better than failing the caller
                raise ValetkeyError(
                    f"connection {conn.id}: another process has been refreshing it for over "
                    f"{self.config.refresh_wait:.0f}s"
                )

    async def _call_provider(
        self, conn: Connection, cred: Credential, secret: Secret, actor: str, tolerate: bool = True
    ) -> Secret:
        """Refresh at the provider and store the result. With ``tolerate`` (vends and the
        scheduler), a rate limit or a failure while the current token is still valid returns the
        current token; an explicit refresh reports it."""
        connector = self._kernel.connectors.get(conn.connector)
        provider = self._provider(connector)
        try:
            fresh = await provider.refresh(connector, secret)
        except NeedsReauth as exc:
            await self._needs_reauth(conn, str(exc), actor)
            raise AssertionError("unreachable") from None  # _needs_reauth raises
        except RateLimited:
            if tolerate and not _expired(cred, self._clock()):
                log.info("refresh of %s rate-limited; the current token is still valid", conn.id)
                return secret
            raise
        except ValetkeyError as exc:
            if tolerate and not _expired(cred, self._clock()):
                log.warning(
                    "refresh of %s failed (%s); the current token is still valid", conn.id, exc
                )
                return secret
            raise
        _remember(fresh)
        if not fresh.refresh_token and secret.refresh_token:
            fresh = fresh.with_changes(refresh_token=secret.refresh_token)
        sealed = self._kernel.sealer.seal(fresh.to_bytes(), cred.id.encode())
        stored = await self.store.credentials.replace(
            conn.id, sealed, fresh.expires_at, expected_version=cred.version
        )
        await self.store.audit.append(
            "refresh",
            actor=actor,
            owner=conn.owner,
            connection_id=conn.id,
            detail={"version": stored.version},
        )
        return fresh

    async def _needs_reauth(self, conn: Connection, why: str, actor: str) -> None:
        """Flip to NEEDS_REAUTH, audit, notify (with a way back in), raise NeedsReauth."""
        await self.store.connections.set_status(conn.id, ConnectionStatus.NEEDS_REAUTH, error=why)
        await self.store.audit.append(
            "reauth.required",
            actor=actor,
            owner=conn.owner,
            connection_id=conn.id,
            detail={"reason": why},
        )
        offer = await self._reconnect_offer(conn)
        await self._kernel.notify(
            Notification(
                kind="needs_reauth",
                message=f"{conn.connector} connection {conn.id} of {conn.owner} needs "
                f"re-authorization: {why}",
                owner=conn.owner,
                connection_id=conn.id,
                connector=conn.connector,
                data={
                    "connect_command": f"valetkey connect {conn.connector} --owner "
                    f"{conn.owner} --connection {conn.id}",
                    **offer,
                },
            )
        )
        raise NeedsReauth(
            f"connection {conn.id} ({conn.connector}) needs re-authorization: {why}; run "
            f"'valetkey connect {conn.connector} --connection {conn.id}'"
        )

    async def _reconnect_offer(self, conn: Connection) -> dict[str, Any]:
        """A connect link (with ``public_url``) and, in a server, a device code whose approval
        is awaited in the background. Failing to make either never stops the notification."""
        from .reconnect import device_offer, flows, start_authorization

        offer: dict[str, Any] = {}
        try:
            connector = self._kernel.connectors.get(conn.connector)
            if connector.auth.type is not AuthType.OAUTH2:
                return offer
            if self.config.public_url and connector.auth.authorize_url:
                started = await start_authorization(self._kernel, self.config, conn, connector)
                offer["connect_url"] = started.url
                offer["connect_url_expires_at"] = started.expires_at.isoformat()
            if self._background and connector.auth.device_authorization_url:
                oauth = flows(self._kernel)
                device = await oauth.start_device(connector, connector.auth.scopes)
                offer.update(device_offer(device))
                task = asyncio.get_running_loop().create_task(
                    self._complete_device(conn, connector, device)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except ValetkeyError as exc:
            log.warning("no reconnect link for %s: %s", conn.id, exc)
        return offer

    async def _complete_device(
        self, conn: Connection, connector: Connector, device: DeviceAuthorization
    ) -> None:
        """Wait for the person to enter the device code; store the new credential."""
        from .reconnect import flows

        try:
            secret = await flows(self._kernel).poll_device(connector, device)
            await self.store_secret(conn.owner, conn.id, secret, actor="reauth.device")
            await self.store.audit.append(
                "reauth.completed",
                actor="reauth.device",
                owner=conn.owner,
                connection_id=conn.id,
            )
            await self._kernel.notify(
                Notification(
                    kind="reauthorized",
                    message=f"{conn.connector} connection {conn.id} of {conn.owner} is "
                    "connected again",
                    owner=conn.owner,
                    connection_id=conn.id,
                    connector=conn.connector,
                )
            )
        except ValetkeyError as exc:
            log.info("device re-authorization of %s did not complete: %s", conn.id, exc)

    def _provider(self, connector: Connector) -> CredentialProvider:
        return self._kernel.credential_provider(connector.auth.type.value)


def _handled(report: RefreshReport) -> int:
    """Refreshes a pass attempted (what counts against its batch)."""
    return len(report.refreshed) + len(report.failed) + len(report.needs_reauth)


def _remember(secret: Secret) -> None:
    """Every value this process handles is redacted from its logs and error texts."""
    for value in secret.values():
        register_secret(value)


def _check_status(conn: Connection) -> None:
    if conn.status is ConnectionStatus.REVOKED:
        raise Revoked(f"connection {conn.id} is revoked")
    if conn.status is ConnectionStatus.NEEDS_REAUTH:
        raise NeedsReauth(
            f"connection {conn.id} ({conn.connector}) needs re-authorization; run "
            f"'valetkey connect {conn.connector} --connection {conn.id}'"
        )


def _expired(cred: Credential, now: datetime) -> bool:
    return cred.expires_at is not None and cred.expires_at <= now


def _kind_for(connector: Connector, secret: Secret) -> CredentialKind:
    if connector.auth.type is AuthType.OAUTH2 or secret.access_token:
        return CredentialKind.OAUTH2
    if connector.auth.type is AuthType.BASIC:
        return CredentialKind.BASIC
    return CredentialKind.API_KEY


_serving: weakref.WeakKeyDictionary[Any, Broker] = weakref.WeakKeyDictionary()


def serving_broker(kernel: KernelAPI) -> Broker:
    """The one broker of a running server, shared by the REST API and the refresh-ahead service,
    so their vends and refreshes of a connection share one in-flight refresh (the lease row
    only serialises them across processes)."""
    broker = _serving.get(kernel)
    if broker is None:
        broker = _serving[kernel] = Broker(kernel, kernel.plugin_config("broker"), background=True)
    return broker
