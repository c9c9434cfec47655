"""The broker's commands. Each opens the kernel (store migrations), does one thing, and prints a
table for people or JSON for scripts. Secrets are read from stdin or a hidden prompt, never argv,
and printed only by ``valetkey token``."""

from __future__ import annotations

import getpass
import json as _json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from cyclopts import App

from valetkey_hookspecs import (
    AcquireRequest,
    AuthType,
    Connection,
    InvalidInput,
    Secret,
)

from .broker import Broker
from .ids import check_owner, default_owner

T = TypeVar("T")

key_app = App(name="key", help="Add an API key (read from stdin or a hidden prompt).")
connections_app = App(name="connections", help="List, show, revoke, delete connections.")
tokens_app = App(name="tokens", help="Create, list and revoke REST API tokens.")


def _run(fn: Callable[[Broker, Any], Awaitable[T]]) -> T:
    """Open the CLI's kernel, build a broker, run ``fn(broker, kernel)``."""
    from valetkey.cli import state

    kernel = state.kernel()

    async def main() -> T:
        async with kernel:
            return await fn(Broker(kernel, kernel.plugin_config("broker")), kernel)

    return anyio.run(main)


def _owner(owner: str | None) -> str:
    return check_owner(owner or default_owner())


def _row(conn: Connection) -> dict[str, Any]:
    return {
        "id": conn.id,
        "owner": conn.owner,
        "connector": conn.connector,
        "status": conn.status.value,
        "label": conn.label,
        "error": conn.error,
        "created_at": conn.created_at.isoformat(),
        "updated_at": conn.updated_at.isoformat(),
    }


def _print_json(data: Any) -> None:
    sys.stdout.write(_json.dumps(data, indent=2, default=str) + "\n")


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    from valetkey.cli.output import print_table

    print_table(headers, rows)


def connect(
    slug: str,
    *,
    owner: str | None = None,
    device: bool = False,
    no_browser: bool = False,
    scope: list[str] | None = None,
    label: str = "",
    connection: str | None = None,
    json: bool = False,
) -> int:
    """Connect an OAuth account: a browser login (PKCE over a loopback redirect) or, with
    --device or on a machine with no display, a device code to enter on another device.

    Parameters
    ----------
    slug
        The connector (see 'valetkey connectors list').
    owner
        Whose connection (default: the OS user name, or VALETKEY_OWNER).
    device
        Use the device flow (RFC 8628) even where a browser could open.
    no_browser
        Print the login URL instead of opening a browser.
    scope
        Scopes to ask for instead of the connector's defaults; repeatable.
    label
        A name for the connection.
    connection
        Re-authorize this existing connection instead of creating one.
    json
        Print the connection as JSON.
    """
    who = _owner(owner)

    async def run(broker: Broker, kernel: Any) -> Connection:
        connector = kernel.connectors.get(slug)
        if connector.auth.type is not AuthType.OAUTH2:
            raise InvalidInput(f"{slug} uses an API key, not OAuth: run 'valetkey key add {slug}'")
        if connection is not None:
            existing = await broker.get_connection(who, connection)
            if existing.connector != slug:
                raise InvalidInput(f"connection {connection} is a {existing.connector} connection")
        provider = kernel.credential_provider("oauth2")
        request = AcquireRequest(
            owner=who,
            connector=connector,
            scopes=tuple(scope or ()),
            options={"device": device, "no_browser": no_browser},
        )
        secret = await provider.acquire(request)
        conn = (
            existing
            if connection is not None
            else await broker.create_connection(who, slug, label=label)
        )
        await broker.store_secret(who, conn.id, secret)
        return await broker.get_connection(who, conn.id)

    conn = _run(run)
    if json:
        _print_json(_row(conn))
    else:
        print(f"connected {conn.connector} as {conn.id} (owner {conn.owner})")
    return 0


def _read_key(with_secret: bool) -> Secret:
    if sys.stdin.isatty():
        key = getpass.getpass("API key: ").strip()
        secret = getpass.getpass("API secret: ").strip() if with_secret else ""
    else:
        lines = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
        key = lines[0] if lines else ""
        secret = lines[1] if len(lines) > 1 else ""
        if with_secret and not secret:
            raise InvalidInput("--with-secret: put the API secret on the second line of stdin")
    if not key:
        raise InvalidInput("no API key given: pipe it on stdin or type it at the prompt")
    return Secret(api_key=key, api_secret=secret or None)


@key_app.command
def add(
    slug: str,
    *,
    owner: str | None = None,
    label: str = "",
    with_secret: bool = False,
    connection: str | None = None,
    json: bool = False,
) -> int:
    """Store an API key for a connector. The key is read from stdin (first line; the API secret,
    if any, on the second) or from a hidden prompt — never from the command line.

    Parameters
    ----------
    slug
        The connector.
    owner
        Whose connection (default: the OS user name, or VALETKEY_OWNER).
    label
        A name for the connection.
    with_secret
        Also read an API secret (APIs that take a key and a secret).
    connection
        Replace the key of this existing connection (rotation) instead of creating one.
    json
        Print the connection as JSON.
    """
    who = _owner(owner)
    secret = _read_key(with_secret)

    async def run(broker: Broker, kernel: Any) -> Connection:
        connector = kernel.connectors.get(slug)
        if connection is not None:
            conn = await broker.get_connection(who, connection)
            if conn.connector != slug:
                raise InvalidInput(f"connection {connection} is a {conn.connector} connection")
        else:
            if connector.auth.type is AuthType.OAUTH2:
                raise InvalidInput(f"{slug} uses OAuth: run 'valetkey connect {slug}'")
            conn = await broker.create_connection(who, slug, label=label)
        await broker.store_secret(who, conn.id, secret)
        return await broker.get_connection(who, conn.id)

    conn = _run(run)
    if json:
        _print_json(_row(conn))
    else:
        print(f"stored a {conn.connector} key as {conn.id} (owner {conn.owner})")
    return 0


@connections_app.command(name="list")
def list_(*, owner: str | None = None, json: bool = False) -> int:
    """List an owner's connections.

    Parameters
    ----------
    owner
        Whose connections (default: the OS user name, or VALETKEY_OWNER).
    json
        Print a JSON array.
    """
    who = _owner(owner)

    async def run(broker: Broker, _kernel: Any) -> list[Connection]:
        return await broker.list_connections(who)

    conns = _run(run)
    if json:
        _print_json([_row(c) for c in conns])
        return 0
    _table(
        ["ID", "CONNECTOR", "STATUS", "LABEL", "UPDATED"],
        [
            [c.id, c.connector, c.status.value, c.label, c.updated_at.strftime("%Y-%m-%d %H:%M")]
            for c in conns
        ],
    )
    return 0


@connections_app.command
def show(connection: str, *, owner: str | None = None, json: bool = False) -> int:
    """Show one connection (never its secret).

    Parameters
    ----------
    connection
        The connection id.
    owner
        Whose connection (default: the OS user name, or VALETKEY_OWNER).
    json
        Print JSON.
    """
    who = _owner(owner)

    async def run(broker: Broker, _kernel: Any) -> dict[str, Any]:
        conn, cred = await broker.store.credentials.get_with_connection(connection, who)
        row = _row(conn)
        row["credential"] = (
            None
            if cred is None
            else {
                "kind": cred.kind.value,
                "expires_at": cred.expires_at.isoformat() if cred.expires_at else None,
                "version": cred.version,
                "key_id": cred.sealed.key_id,
                "updated_at": cred.updated_at.isoformat(),
            }
        )
        return row

    row = _run(run)
    if json:
        _print_json(row)
    else:
        for key, value in row.items():
            if key == "credential" and value:
                for sub, sub_value in value.items():
                    print(f"credential.{sub}: {sub_value}")
            else:
                print(f"{key}: {'' if value is None else value}")
    return 0


@connections_app.command
def revoke(connection: str, *, owner: str | None = None) -> int:
    """Revoke a connection: it vends nothing from now on.

    Parameters
    ----------
    connection
        The connection id.
    owner
        Whose connection (default: the OS user name, or VALETKEY_OWNER).
    """
    who = _owner(owner)

    async def run(broker: Broker, _kernel: Any) -> Connection:
        return await broker.revoke(who, connection)

    conn = _run(run)
    print(f"revoked {conn.id}")
    return 0


@connections_app.command
def delete(connection: str, *, owner: str | None = None) -> int:
    """Delete a connection and its sealed credential.

    Parameters
    ----------
    connection
        The connection id.
    owner
        Whose connection (default: the OS user name, or VALETKEY_OWNER).
    """
    who = _owner(owner)

    async def run(broker: Broker, _kernel: Any) -> None:
        await broker.delete(who, connection)

    _run(run)
    print(f"deleted {connection}")
    return 0


def token(connection: str, *, owner: str | None = None) -> int:
    """Print only the connection's current token (refreshed first if close to expiry), for
    GITHUB_TOKEN=$(valetkey token conn_...).

    Parameters
    ----------
    connection
        The connection id.
    owner
        Whose connection (default: the OS user name, or VALETKEY_OWNER).
    """
    who = _owner(owner)

    async def run(broker: Broker, _kernel: Any) -> Secret:
        return await broker.vend(who, connection, actor="cli")

    secret = _run(run)
    sys.stdout.write(f"{secret.token}\n")
    return 0


def refresh(
    connection: str | None = None,
    *,
    due: bool = False,
    owner: str | None = None,
    json: bool = False,
) -> int:
    """Refresh one connection now, or (--due) every credential close to expiry.

    Parameters
    ----------
    connection
        The connection id (omit with --due).
    due
        Refresh every credential that expires within the refresh lead, as the scheduler does.
    owner
        Whose connection (default: the OS user name, or VALETKEY_OWNER).
    json
        Print JSON.
    """
    if (connection is None) == (not due):
        raise InvalidInput("give a connection id, or --due (not both)")
    if due:

        async def run_due(broker: Broker, _kernel: Any) -> dict[str, list[str]]:
            return (await broker.refresh_due(actor="cli")).as_dict()

        report = _run(run_due)
        if json:
            _print_json(report)
        else:
            print(", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in report.items()))
        return 1 if report["failed"] or report["needs_reauth"] else 0
    who = _owner(owner)
    assert connection is not None

    async def run_one(broker: Broker, _kernel: Any) -> Secret:
        return await broker.refresh(who, connection)

    secret = _run(run_one)
    expires = secret.expires_at.isoformat() if secret.expires_at else "never"
    if json:
        _print_json({"id": connection, "expires_at": expires})
    else:
        print(f"refreshed {connection}; expires {expires}")
    return 0


def audit(
    *,
    owner: str | None = None,
    all_owners: bool = False,
    connection: str | None = None,
    limit: int = 100,
    verify: bool = False,
    json: bool = False,
) -> int:
    """Show the audit log (every vend, refresh, re-auth, revoke, key rotation), or --verify its
    hash chain end to end.

    Parameters
    ----------
    owner
        Whose events (default: the OS user name, or VALETKEY_OWNER).
    all_owners
        Every owner's events.
    connection
        Only this connection's events.
    limit
        How many of the latest events.
    verify
        Check the whole chain; exit 1 naming the first bad event.
    json
        Print JSON.
    """
    from valetkey_hookspecs.audit import verify_chain

    who = None if all_owners else _owner(owner)

    async def run(broker: Broker, _kernel: Any) -> tuple[list[Any], int | None, int]:
        if verify:
            events: list[Any] = []
            after = 0
            while page := await broker.store.audit.list(after_seq=after, limit=5000):
                events.extend(page)
                after = page[-1].seq
            return [], verify_chain(events), len(events)
        events = []
        after = 0
        while page := await broker.store.audit.list(
            owner=who, connection_id=connection, after_seq=after, limit=5000
        ):
            events.extend(page)
            after = page[-1].seq
        return events[-limit:], None, len(events)

    events, bad, count = _run(run)
    if verify:
        if json:
            _print_json({"ok": bad is None, "events": count, "first_bad_seq": bad})
        elif bad is None:
            print(f"audit chain verified: {count} events")
        else:
            sys.stderr.write(f"valetkey: error: audit chain broken at event {bad}\n")
        return 0 if bad is None else 1
    rows = [
        {
            "seq": e.seq,
            "at": e.at.isoformat(),
            "action": e.action,
            "actor": e.actor,
            "owner": e.owner,
            "connection_id": e.connection_id,
            "detail": dict(e.detail),
        }
        for e in events
    ]
    if json:
        _print_json(rows)
    else:
        _table(
            ["SEQ", "AT", "ACTION", "ACTOR", "OWNER", "CONNECTION"],
            [
                [
                    r["seq"],
                    r["at"][:19],
                    r["action"],
                    r["actor"],
                    r["owner"] or "",
                    r["connection_id"] or "",
                ]
                for r in rows
            ],
        )
    return 0


@tokens_app.command
def create(*, owner: str | None = None, name: str = "", json: bool = False) -> int:
    """Create a REST API token bound to an owner. It is printed once; only its hash is kept.

    Parameters
    ----------
    owner
        The owner the token acts as (default: the OS user name, or VALETKEY_OWNER).
    name
        A name to recognise it by.
    json
        Print JSON (id, owner, name, token).
    """
    from .api import create_api_token

    who = _owner(owner)

    async def run(_broker: Broker, kernel: Any) -> tuple[Any, str]:
        return await create_api_token(kernel, who, name)

    record, secret_token = _run(run)
    if json:
        _print_json(
            {"id": record.id, "owner": record.owner, "name": record.name, "token": secret_token}
        )
    else:
        sys.stderr.write(f"API token {record.id} for {record.owner} (shown once):\n")
        sys.stdout.write(secret_token + "\n")
    return 0


@tokens_app.command(name="list")
def tokens_list(*, owner: str | None = None, json: bool = False) -> int:
    """List an owner's API tokens (never the tokens themselves).

    Parameters
    ----------
    owner
        Whose tokens (default: the OS user name, or VALETKEY_OWNER).
    json
        Print JSON.
    """
    who = _owner(owner)

    async def run(broker: Broker, _kernel: Any) -> list[Any]:
        return await broker.store.api_tokens.list(who)

    rows = [
        {
            "id": t.id,
            "owner": t.owner,
            "name": t.name,
            "created_at": t.created_at.isoformat(),
            "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
        }
        for t in _run(run)
    ]
    if json:
        _print_json(rows)
    else:
        _table(
            ["ID", "NAME", "CREATED", "LAST USED"],
            [
                [r["id"], r["name"], r["created_at"][:19], (r["last_used_at"] or "")[:19]]
                for r in rows
            ],
        )
    return 0


@tokens_app.command(name="revoke")
def tokens_revoke(token_id: str, *, owner: str | None = None) -> int:
    """Revoke an API token by id.

    Parameters
    ----------
    token_id
        The token's id (tok_...).
    owner
        Whose token (default: the OS user name, or VALETKEY_OWNER).
    """
    who = _owner(owner)

    async def run(broker: Broker, _kernel: Any) -> None:
        await broker.store.api_tokens.delete(token_id, who)
        await broker.store.audit.append(
            "api_token.revoke", actor="cli", owner=who, detail={"token_id": token_id}
        )

    _run(run)
    print(f"revoked {token_id}")
    return 0
