"""The relay client's commands: ``valetkey relay connect | attach | status | revoke | serve``.

The machine token is read from stdin or a hidden prompt — never from the command line — and is
shown only masked. ``attach`` probes before it saves, so a wrong token or URL changes nothing.
"""

from __future__ import annotations

import getpass
import json as _json
import sys

import anyio

from valetkey_hookspecs import ConfigError, InvalidInput

from . import credential
from .config import RelayConfig
from .protocol import check_token, mask_token, mcp_url, parse_attach_line, parse_relay_url


def _config() -> RelayConfig:
    from valetkey.cli import state

    config = state.kernel().plugin_config("relay")
    return config if isinstance(config, RelayConfig) else RelayConfig()


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


def _read_secret(prompt: str) -> str:
    """One secret line from a hidden prompt (terminal) or the first non-empty stdin line."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt).strip()
    for line in sys.stdin.read().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _attach(base_url: str, token: str, *, force: bool, config: RelayConfig) -> int:
    """Probe, then save; switch relays only with ``force``; the old keyring entry goes last."""
    from .client import probe

    base, relay_id = parse_relay_url(base_url)
    token = check_token(token)
    old_base, old_id = "", None
    try:
        old_base, old_id, _old_token = credential.read_metadata()
    except credential.NotAttached:
        pass
    except ConfigError as exc:
        if not force:
            raise ConfigError(f"{exc} (pass --force to replace it)") from None
    if old_id is not None and old_id != relay_id and not force:
        raise InvalidInput(
            f"this machine is attached to relay {old_id} ({old_base}) already: pass --force to "
            f"switch to relay {relay_id}"
        )
    cred = credential.Credential(base, relay_id, token)
    anyio.run(probe, cred, config.probe_timeout)
    result = credential.save(cred)
    if old_id is not None and old_id != relay_id:
        credential.revoke_keyring_entry(old_id)
    if result.warning:
        _say(f"valetkey: warning: {result.warning}")
    where = "the OS keyring" if result.stored_in == "keyring" else str(credential.path())
    _say(f"attached to relay {relay_id} (machine token in {where})")
    _say(f"public MCP endpoint: {mcp_url(base)}")
    _say("next: run 'valetkey relay serve' on this machine")
    return 0


def attach(*, url: str, token_stdin: bool = False, force: bool = False) -> int:
    """Attach this machine to a relay: check the machine token with one handshake, then keep it
    in the OS keyring (the URL and relay id go to relay.toml).

    Parameters
    ----------
    url
        The relay URL the connect page shows (https://HOST/relay/ID/).
    token_stdin
        Read the machine token from stdin (the only way to give it: never on the command line).
        Without it, a hidden prompt asks for it on a terminal.
    force
        Replace an attachment to a different relay (re-attaching to the same relay, e.g. a new
        token, never needs it).
    """
    if not token_stdin and not sys.stdin.isatty():
        raise InvalidInput("pass the machine token on stdin with --token-stdin")
    token = _read_secret("machine token: ")
    if not token:
        raise InvalidInput("no machine token on stdin: pipe it in with --token-stdin")
    return _attach(url, token, force=force, config=_config())


def connect(*, server: str | None = None, no_browser: bool = False, force: bool = False) -> int:
    """Attach this machine to a relay through its connect page: open the page, then paste the
    attach line it shows (URL and machine token, in any reasonable form).

    Parameters
    ----------
    server
        The relay host (default: [plugin.relay] server), e.g. https://relay.example.
    no_browser
        Print the connect page's URL instead of opening a browser.
    force
        Replace an attachment to a different relay.
    """
    config = _config()
    host = (server or config.server).strip().rstrip("/")
    if not host:
        raise InvalidInput(
            "no relay server: pass --server https://HOST or set server in [plugin.relay]"
        )
    if not host.startswith(("https://", "http://")):
        raise InvalidInput(f"--server {host!r}: give an http(s) URL")
    page = f"{host}/connect"
    if no_browser or not _open_browser(page):
        _say(f"open this page in a browser: {page}")
    else:
        _say(f"opened {page} in your browser")
    line = _read_secret("paste the attach line the page shows: ")
    base, token = parse_attach_line(line)
    return _attach(base, token, force=force, config=config)


def _open_browser(url: str) -> bool:
    import webbrowser

    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def status(*, json: bool = False) -> int:
    """Show the relay this machine is attached to (the token masked); "not attached" is not an
    error.

    Parameters
    ----------
    json
        Print JSON.
    """
    try:
        cred = credential.load()
    except credential.NotAttached:
        if json:
            sys.stdout.write(_json.dumps({"attached": False}) + "\n")
        else:
            print("not attached (run 'valetkey relay connect')")
        return 0
    row = {
        "attached": True,
        "relay_id": cred.relay_id,
        "url": cred.relay_base_url,
        "mcp_url": mcp_url(cred.relay_base_url),
        "token": mask_token(cred.machine_token),
        "token_store": cred.stored_in,
        "file": str(credential.path()),
    }
    if json:
        sys.stdout.write(_json.dumps(row, indent=2) + "\n")
    else:
        for key, value in row.items():
            if key != "attached":
                print(f"{key}: {value}")
    return 0


def revoke() -> int:
    """Forget this machine's relay credential: the keyring entry and relay.toml. Idempotent."""
    if credential.delete():
        print("removed the relay credential of this machine")
    else:
        print("nothing to remove: not attached")
    return 0


def serve() -> int:
    """Serve this machine's MCP tools (every plugin's, as at /mcp of 'valetkey serve') through
    the relay until Ctrl-C or SIGTERM; reconnects with backoff when the connection drops."""
    import signal

    from valetkey.cli import state
    from valetkey.serve.mcp import build_mcp_server

    from .client import ServeOptions
    from .client import serve as serve_loop

    config = _config()
    cred = credential.load()
    kernel = state.kernel()
    tools = len(kernel.mcp_tools())

    def connected(relay_id: str) -> None:
        _say(f"relay {relay_id}: serving {tools} MCP tools at {mcp_url(cred.relay_base_url)}")

    options = ServeOptions(
        call_timeout=config.call_timeout,
        max_frame_bytes=config.max_frame_bytes,
        concurrency=config.concurrency,
        ping_interval=config.ping_interval,
        on_connected=connected,
    )

    async def main() -> None:
        async with kernel, anyio.create_task_group() as group:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _signum in signals:
                        group.cancel_scope.cancel()
                        return

            group.start_soon(stop_on_signal)
            await serve_loop(cred, lambda: build_mcp_server(kernel), options)

    anyio.run(main)
    _say("relay stopped")
    return 0
