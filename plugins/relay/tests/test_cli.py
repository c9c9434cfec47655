"""``valetkey relay attach | connect | status | revoke`` through the real CLI in subprocesses,
against a real WebSocket server standing in for the relay: the token only ever on stdin, probe
before save, --force to switch relays, masked output, and every bad input changing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import pytest

pytestmark = pytest.mark.anyio

OTHER_TOKEN = "vkm_" + "o" * 43


@pytest.fixture
def cli(isolated):
    env = {k: v for k, v in os.environ.items() if k != "VALETKEY_CONFIG"}

    async def run(*args, stdin=""):
        def go():
            return subprocess.run(
                [sys.executable, "-m", "valetkey", "relay", *args],
                input=stdin,
                capture_output=True,
                text=True,
                env=env,
                cwd=isolated,
                timeout=60,
                check=False,
            )

        return await anyio.to_thread.run_sync(go)

    return run


def toml(isolated):
    return isolated / "config" / "valetkey" / "relay.toml"


async def attach(cli, relay, token=None, *extra, relay_id=None):
    url = relay.url_of(relay_id or relay.relay_id)
    return await cli("attach", "--url", url, "--token-stdin", *extra, stdin=(token or relay.token))


async def status(cli):
    proc = await cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


async def test_status_when_not_attached_exits_0(cli):
    proc = await cli("status")
    assert (proc.returncode, proc.stdout) == (0, "not attached (run 'valetkey relay connect')\n")
    assert await status(cli) == {"attached": False}


async def test_attach_then_status_shows_the_token_masked(cli, fake_relay, isolated):
    proc = await attach(cli, fake_relay)
    assert proc.returncode == 0, proc.stderr
    assert "valetkey: warning: no usable OS keyring (NoKeyringError)" in proc.stderr
    assert f"attached to relay {fake_relay.relay_id}" in proc.stderr
    assert f"{fake_relay.url}mcp" in proc.stderr
    shown = await status(cli)
    assert shown["relay_id"] == fake_relay.relay_id
    assert shown["token"] == "vkm_...********"
    assert shown["token_store"] == "file"
    plain = await cli("status")
    assert fake_relay.token not in plain.stdout + plain.stderr
    assert "token: vkm_...********" in plain.stdout
    assert oct(toml(isolated).stat().st_mode & 0o777) == "0o600"


async def test_the_token_is_never_taken_from_argv(cli, fake_relay, isolated):
    proc = await cli("attach", "--url", fake_relay.url, "--token", fake_relay.token)
    assert proc.returncode != 0
    assert not toml(isolated).exists()
    proc = await cli("attach", "--url", fake_relay.url)  # stdin is not a terminal
    assert proc.returncode == 2
    assert "pass the machine token on stdin with --token-stdin" in proc.stderr
    proc = await cli("attach", "--url", fake_relay.url, "--token-stdin", stdin="\n")
    assert proc.returncode == 2
    assert "no machine token on stdin" in proc.stderr
    assert not toml(isolated).exists()


async def test_a_wrong_token_fails_and_keeps_the_previous_credential(cli, fake_relay, isolated):
    assert (await attach(cli, fake_relay)).returncode == 0
    before = toml(isolated).read_bytes()
    proc = await attach(cli, fake_relay, "vkm_wrong_wrong_wrong")
    assert proc.returncode == 1
    assert proc.stderr == (
        "valetkey: error: the relay rejected the machine token (HTTP 401): the token is wrong, "
        "or the relay was reset; re-run 'valetkey relay connect' to attach again\n"
    )
    assert toml(isolated).read_bytes() == before
    assert (await status(cli))["relay_id"] == fake_relay.relay_id


async def test_a_bad_url_changes_nothing(cli, fake_relay, isolated):
    assert (await attach(cli, fake_relay)).returncode == 0
    before = toml(isolated).read_bytes()
    for url, message in [
        ("ftp://x/relay/a/", "must start with https://"),
        ("https://relay.example/nope/", "has no /relay/<id>/"),
        ("https://relay.example/relay/", "empty relay id"),
    ]:
        proc = await cli("attach", "--url", url, "--token-stdin", stdin=fake_relay.token)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert toml(isolated).read_bytes() == before


async def test_switching_relays_needs_force(cli, fake_relay, isolated):
    fake_relay.relay_ids.add("rly_other")
    assert (await attach(cli, fake_relay)).returncode == 0
    before = toml(isolated).read_bytes()
    proc = await attach(cli, fake_relay, relay_id="rly_other")
    assert proc.returncode == 2
    assert (
        f"this machine is attached to relay {fake_relay.relay_id} ({fake_relay.url}) already: "
        "pass --force to switch to relay rly_other"
    ) in proc.stderr
    assert toml(isolated).read_bytes() == before
    probes = len(fake_relay.handshakes)
    assert probes == 1  # refused before any probe
    proc = await attach(cli, fake_relay, None, "--force", relay_id="rly_other")
    assert proc.returncode == 0, proc.stderr
    assert (await status(cli))["relay_id"] == "rly_other"
    # the same relay again (token rotation) never needs --force
    fake_relay.token = OTHER_TOKEN
    proc = await attach(cli, fake_relay, OTHER_TOKEN, relay_id="rly_other")
    assert proc.returncode == 0, proc.stderr


async def test_connect_reads_the_attach_line(cli, fake_relay):
    server = f"http://127.0.0.1:{fake_relay.port}"
    line = f"valetkey relay attach {fake_relay.url} {fake_relay.token}\n"
    proc = await cli("connect", "--no-browser", "--server", server, stdin=line)
    assert proc.returncode == 0, proc.stderr
    assert f"open this page in a browser: {server}/connect" in proc.stderr
    assert (await status(cli))["relay_id"] == fake_relay.relay_id


async def test_connect_errors_change_nothing(cli, fake_relay, isolated):
    proc = await cli("connect", "--no-browser", stdin="")
    assert proc.returncode == 2
    assert "no relay server: pass --server https://HOST" in proc.stderr
    server = f"http://127.0.0.1:{fake_relay.port}"
    proc = await cli("connect", "--no-browser", "--server", server, stdin="just some words\n")
    assert proc.returncode == 2
    assert "the attach line holds no relay URL" in proc.stderr
    proc = await cli("connect", "--no-browser", "--server", "relay.example", stdin="")
    assert proc.returncode == 2 and "give an http(s) URL" in proc.stderr
    assert not toml(isolated).exists()


async def test_revoke_is_idempotent(cli, fake_relay, isolated):
    assert (await attach(cli, fake_relay)).returncode == 0
    proc = await cli("revoke")
    assert (proc.returncode, proc.stdout) == (0, "removed the relay credential of this machine\n")
    assert not toml(isolated).exists()
    proc = await cli("revoke")
    assert (proc.returncode, proc.stdout) == (0, "nothing to remove: not attached\n")


async def test_serve_without_a_credential_is_one_line(cli):
    proc = await cli("serve")
    assert proc.returncode == 1
    assert proc.stderr == (
        "valetkey: error: not attached to a relay (no "
        f"{os.environ['XDG_CONFIG_HOME']}/valetkey/relay.toml): run 'valetkey relay connect'\n"
    )


async def test_a_corrupt_credential_file_needs_force(cli, fake_relay, isolated):
    toml(isolated).parent.mkdir(parents=True)
    toml(isolated).write_text("relay_id = [")
    proc = await attach(cli, fake_relay)
    assert proc.returncode == 78
    assert "is not valid TOML" in proc.stderr and "(pass --force to replace it)" in proc.stderr
    assert toml(isolated).read_text() == "relay_id = ["
    proc = await attach(cli, fake_relay, None, "--force")
    assert proc.returncode == 0, proc.stderr
    assert (await status(cli))["relay_id"] == fake_relay.relay_id


@pytest.mark.keyring
async def test_switching_relays_moves_the_keyring_entry_only_on_success(secret_service, fake_relay):
    """In process (the keyring is this process's): the old relay's entry is removed only after
    the new relay's probe and save succeeded."""
    from valetkey_relay.cli import _attach
    from valetkey_relay.client import ProbeUnauthorized
    from valetkey_relay.config import RelayConfig
    from valetkey_relay.protocol import KEYRING_SERVICE

    fake_relay.relay_ids.add("rly_second")
    first, second = fake_relay.relay_id, "rly_second"

    def go(relay_id, token, force):
        return _attach(fake_relay.url_of(relay_id), token, force=force, config=RelayConfig())

    assert await anyio.to_thread.run_sync(go, first, fake_relay.token, False) == 0
    assert secret_service.get_password(KEYRING_SERVICE, first) == fake_relay.token
    with pytest.raises(ProbeUnauthorized, match="rejected the machine token"):
        await anyio.to_thread.run_sync(go, second, "vkm_wrong_wrong_wrong", True)
    assert secret_service.get_password(KEYRING_SERVICE, first) == fake_relay.token
    assert secret_service.get_password(KEYRING_SERVICE, second) is None
    assert await anyio.to_thread.run_sync(go, second, fake_relay.token, True) == 0
    assert secret_service.get_password(KEYRING_SERVICE, second) == fake_relay.token
    assert secret_service.get_password(KEYRING_SERVICE, first) is None
    secret_service.delete_password(KEYRING_SERVICE, second)
