"""The relay host's commands: ``valetkey relay host`` and ``valetkey relay token create | list |
revoke`` (access tokens for the public MCP endpoint; printed once, stored hashed)."""

from __future__ import annotations

import json as _json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from cyclopts import App

from valetkey_hookspecs import InvalidInput
from valetkey_hookspecs.types import RelayAccessToken
from valetkey_relay.protocol import new_access_token, token_hash

from .config import RelayServerConfig

T = TypeVar("T")

token_app = App(name="token", help="Create, list and revoke access tokens of a hosted relay.")


def _kernel() -> Any:
    from valetkey.cli import state

    return state.kernel()


def _config(kernel: Any) -> RelayServerConfig:
    config = kernel.plugin_config("relay-server")
    return config if isinstance(config, RelayServerConfig) else RelayServerConfig()


def _run(fn: Callable[[Any], Awaitable[T]]) -> T:
    kernel = _kernel()

    async def main() -> T:
        async with kernel:
            return await fn(kernel)

    return anyio.run(main)


def host(*, host: str = "127.0.0.1", port: int = 8770, public_url: str | None = None) -> int:
    """Host a relay: the connect page, the machines' WebSocket endpoint and each relay's public
    MCP endpoint, until Ctrl-C or SIGTERM.

    Parameters
    ----------
    host
        Address to listen on (put a TLS-terminating proxy in front for the internet).
    port
        TCP port (0 picks a free one).
    public_url
        The URL the public reaches this host at, used in attach lines (default: [plugin.relay-
        server] public_url, else each request's own URL).
    """
    import socket

    import uvicorn

    from .app import build_app, uvicorn_config

    if not 0 <= port <= 65535:
        raise InvalidInput(f"--port {port} is not a TCP port (0-65535)")
    kernel = _kernel()
    config = _config(kernel)
    if public_url is not None:
        if not public_url.startswith(("https://", "http://")):
            raise InvalidInput(f"--public-url {public_url!r}: give an http(s) URL")
        config = RelayServerConfig(**{**config.__dict__, "public_url": public_url})

    async def preflight() -> None:  # a bad store is one line, before anything listens
        async with kernel:
            pass

    anyio.run(preflight)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        sys.stderr.write(f"valetkey relay host on http://{shown}:{bound} (connect page /connect)\n")
        sys.stderr.flush()

    server = uvicorn.Server(uvicorn_config(build_app(kernel, config, on_ready=ready), config))
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if server.started:
        sys.stderr.write("valetkey relay host stopped\n")
        return 0
    sys.stderr.write("valetkey: error: the relay host failed to start (see the log above)\n")
    return 1


def _stopped(_signum: int, _frame: object) -> None:
    return None


def _token_row(token: RelayAccessToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "relay_id": token.relay_id,
        "name": token.name,
        "created_at": token.created_at.isoformat(),
    }


@token_app.command
def create(relay_id: str, *, name: str = "", json: bool = False) -> int:
    """Create an access token for a hosted relay's public MCP endpoint. It is printed once (on
    stdout); only its SHA-256 is kept.

    Parameters
    ----------
    relay_id
        The relay (rly_...), as its connect page showed it.
    name
        A name to recognise the token by (who or what uses it).
    json
        Print JSON (id, relay_id, name, token).
    """
    import secrets

    token = new_access_token()
    record = RelayAccessToken(
        id=f"rat_{secrets.token_hex(6)}", relay_id=relay_id, token_hash=token_hash(token), name=name
    )

    async def run(kernel: Any) -> None:
        await kernel.store.relays.get(relay_id)  # NotFound names the relay
        await kernel.store.relays.add_access_token(record)

    _run(run)
    if json:
        sys.stdout.write(_json.dumps({**_token_row(record), "token": token}) + "\n")
    else:
        sys.stderr.write(f"access token {record.id} for relay {relay_id} (shown once):\n")
        sys.stdout.write(token + "\n")
    return 0


@token_app.command(name="list")
def list_(relay_id: str, *, json: bool = False) -> int:
    """List a hosted relay's access tokens (never the tokens themselves).

    Parameters
    ----------
    relay_id
        The relay (rly_...).
    json
        Print JSON.
    """

    async def run(kernel: Any) -> list[RelayAccessToken]:
        await kernel.store.relays.get(relay_id)
        tokens: list[RelayAccessToken] = await kernel.store.relays.list_access_tokens(relay_id)
        return tokens

    rows = [_token_row(t) for t in _run(run)]
    if json:
        sys.stdout.write(_json.dumps(rows, indent=2) + "\n")
        return 0
    from valetkey.cli.output import print_table

    print_table(
        ["ID", "NAME", "CREATED"], [[r["id"], r["name"], r["created_at"][:19]] for r in rows]
    )
    return 0


@token_app.command
def revoke(token_id: str) -> int:
    """Revoke an access token by id: its next request gets 401.

    Parameters
    ----------
    token_id
        The token's id (rat_...).
    """

    async def run(kernel: Any) -> None:
        await kernel.store.relays.delete_access_token(token_id)

    _run(run)
    print(f"revoked {token_id}")
    return 0
