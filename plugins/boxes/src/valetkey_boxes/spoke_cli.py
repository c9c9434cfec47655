"""``valetkey spoke``: the hub's join tokens and enrolled spokes, and ``spoke run`` (this machine
as a spoke of a hub).

Secrets never go through argv: ``spoke run`` reads the join token from stdin
(``--token-stdin``) or a hidden prompt, and ``spoke token create`` prints the new token once, on
stdout, for the operator to hand over.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from cyclopts import App

from valetkey_hookspecs import ConfigError, InvalidInput, KernelAPI, utcnow

T = TypeVar("T")

spoke_app = App(name="spoke", help="Fleet: join tokens, enrolled spokes, and 'spoke run'.")
token_app = App(name="token", help="One-time join tokens spokes enroll with.")
spoke_app.command(token_app)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _json(data: Any) -> None:
    from valetkey.cli.output import print_json

    print_json(data)


def _with_kernel(fn: Callable[[KernelAPI], Awaitable[T]]) -> T:
    from valetkey.cli import state

    kernel = state.kernel()

    async def main() -> T:
        async with kernel:
            return await fn(kernel)

    return anyio.run(main)


@token_app.command
def create(*, ttl: str, json: bool = False) -> int:
    """Mint a one-time join token (shown once; only its SHA-256 is stored).

    Parameters
    ----------
    ttl
        How long it stays valid: 15m, 1h, 2d (required; at most 30 days).
    json
        Print JSON (id, token, expires_at).
    """
    from .jointokens import create_join_token, parse_ttl

    duration = parse_ttl(ttl)
    minted = _with_kernel(lambda k: create_join_token(k.store, duration))
    if json:
        _json(
            {
                "id": minted.record.id,
                "token": minted.token,
                "expires_at": minted.record.expires_at.isoformat(),
            }
        )
        return 0
    sys.stdout.write(minted.token + "\n")
    _say(
        f"join token {minted.record.id}, valid until {minted.record.expires_at:%Y-%m-%d %H:%M} "
        "UTC, usable once: on the spoke, run 'valetkey spoke run --hub URL --name NAME "
        "--token-stdin' and paste it"
    )
    return 0


@token_app.command(name="list")
def list_tokens(*, json: bool = False) -> int:
    """List join tokens (never their value) and whether they are valid, used or expired.

    Parameters
    ----------
    json
        Print JSON.
    """
    from .jointokens import join_token_state

    tokens = _with_kernel(lambda k: k.store.spokes.list_join_tokens())
    now = utcnow()
    rows = [
        {
            "id": t.id,
            "state": join_token_state(t, now),
            "created_at": t.created_at.isoformat(),
            "expires_at": t.expires_at.isoformat(),
            "used_at": t.used_at.isoformat() if t.used_at else None,
            "used_by": t.used_by,
        }
        for t in tokens
    ]
    if json:
        _json(rows)
        return 0
    from valetkey.cli.output import print_table

    print_table(
        ["ID", "STATE", "EXPIRES", "USED BY"],
        [[r["id"], r["state"], r["expires_at"], r["used_by"]] for r in rows],
    )
    return 0


@token_app.command
def revoke(token_id: str) -> int:
    """Delete a join token so nobody can enroll with it.

    Parameters
    ----------
    token_id
        The token's id (``valetkey spoke token list``).
    """
    from .jointokens import revoke_join_token

    _with_kernel(lambda k: revoke_join_token(k.store, token_id))
    _say(f"join token {token_id} revoked")
    return 0


@spoke_app.command(name="list")
def list_spokes(*, json: bool = False) -> int:
    """List the spokes enrolled at this hub and when each was last seen.

    Parameters
    ----------
    json
        Print JSON.
    """
    spokes = _with_kernel(lambda k: k.store.spokes.list())
    rows = [
        {
            "name": s.name,
            "id": s.id,
            "enrolled_at": s.created_at.isoformat(),
            "last_seen": s.last_seen_at.isoformat() if s.last_seen_at else None,
            "runtime": s.data.get("runtime"),
        }
        for s in spokes
    ]
    if json:
        _json(rows)
        return 0
    from valetkey.cli.output import print_table

    print_table(
        ["NAME", "ID", "LAST SEEN", "RUNTIME"],
        [[r["name"], r["id"], r["last_seen"], r["runtime"]] for r in rows],
    )
    return 0


@spoke_app.command
def delete(name: str) -> int:
    """Delete an enrolled spoke: its credential stops working (a connected spoke is dropped
    within a heartbeat). Its boxes' sessions stay until destroyed.

    Parameters
    ----------
    name
        The spoke's name.
    """
    from valetkey_hookspecs import NotFound

    async def go(kernel: KernelAPI) -> None:
        for spoke in await kernel.store.spokes.list():
            if spoke.name == name:
                await kernel.store.spokes.delete(spoke.id)
                await kernel.store.audit.append(
                    "spoke.delete", actor="cli", detail={"spoke": name, "spoke_id": spoke.id}
                )
                return
        raise NotFound(f"no spoke named {name!r} is enrolled")

    _with_kernel(go)
    _say(f"spoke {name} deleted")
    return 0


def _read_secret(prompt: str) -> str:
    """One secret line from a hidden prompt (terminal) or the first non-empty stdin line."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt).strip()
    for line in sys.stdin.read().splitlines():
        if line.strip():
            return line.strip()
    return ""


@spoke_app.command
def run(*, hub: str, name: str, token_stdin: bool = False, enroll: bool = False) -> int:
    """Run this machine as a spoke of a hub: dial its /spoke/connect (outbound only), enroll
    the first time, then serve boxes on the local runtime; reconnects with backoff.

    Parameters
    ----------
    hub
        The hub's base URL (https://hub.example.com; http only on loopback).
    name
        This spoke's name at the hub (a DNS label, not 'local').
    token_stdin
        Read the join token from stdin (the only way besides the prompt: never on the command
        line). Needed the first time only.
    enroll
        Enroll again with a new join token even though a credential is saved.
    """
    import signal

    from valetkey.cli import state

    from . import fleet_protocol as proto
    from .config import BoxesConfig
    from .spoke import (
        RunOptions,
        SpokeRuntime,
        credential_path,
        load_credential,
        save_credential,
    )
    from .spoke import (
        run as run_loop,
    )

    proto.websocket_url(hub)  # a bad URL fails before anything else
    proto.check_spoke_name(name)
    kernel = state.kernel()
    config = kernel.plugin_config("boxes")
    if not isinstance(config, BoxesConfig):
        config = BoxesConfig()
    if not config.spoke.images:
        raise ConfigError(
            "[plugin.boxes.spoke] images: the allow-list of images hubs may start here is "
            'empty; add patterns, e.g. images = ["ghcr.io/acme/agent-box:*"]'
        )
    home = kernel.home
    saved = None if enroll else load_credential(home, hub, name, kernel.secret_store)
    token: str | None = None
    if saved is None:
        if token_stdin or sys.stdin.isatty():
            token = _read_secret("join token: ")
        if not token:
            raise InvalidInput(
                "this spoke is not enrolled yet: give a join token on stdin (--token-stdin) "
                "or at the prompt (the hub's operator makes one: valetkey spoke token create)"
            )
        proto.check_secret(token, proto.JOIN_TOKEN_PREFIX)
    elif token_stdin:
        _say(f"spoke {name} is enrolled already ({credential_path(home)}): join token not used")

    def save(cred: Any) -> None:
        where = save_credential(home, cred, kernel.secret_store)
        _say(f"spoke {name}: credential kept in {where}")

    def connected(spoke_id: str) -> None:
        _say(f"spoke {name} ({spoke_id}) connected to {hub}")

    def retry(delay: float, why: str) -> None:
        _say(f"spoke {name}: {why}; reconnecting in {delay:g}s")

    options = RunOptions(
        max_frame_bytes=config.hub.max_frame_bytes,
        concurrency=config.spoke.concurrency,
        on_connected=connected,
        on_retry=retry,
    )

    failed: list[BaseException] = []

    async def main() -> None:
        async with kernel, anyio.create_task_group() as group:
            local = kernel.runtime(config.runtime or None)
            runtime = SpokeRuntime(local, name, config.spoke.images)

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _signum in signals:
                        group.cancel_scope.cancel()
                        return

            async def serve() -> None:
                try:
                    await run_loop(
                        runtime, hub, credential=saved, join_token=token, save=save, options=options
                    )
                except Exception as exc:  # re-raised below, outside the task group
                    failed.append(exc)
                finally:
                    group.cancel_scope.cancel()
                    with anyio.CancelScope(shield=True):
                        await runtime.close()

            group.start_soon(stop_on_signal)
            group.start_soon(serve)

    anyio.run(main)
    if failed:
        raise failed[0]
    _say(f"spoke {name} stopped")
    return 0


__all__ = ["spoke_app", "token_app"]
