"""Issue 3's acceptance, end to end against a real authorization server (npm oidc-provider, from
tests/fixtures/oidc): the CLI's PKCE loopback login and device login, refresh with rotation, a
dead grant flipping the connection to NEEDS_REAUTH with one signed webhook, 50 concurrent vends
causing exactly one token request — in one process and across two ``valetkey serve`` processes
on one database —, a 5/min rate profile, and no token in the database, the logs or an error."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import oauth_cli  # tests/fixtures (on pythonpath)
import pytest

from valetkey.kernel import load
from valetkey_broker.broker import Broker
from valetkey_hookspecs import ConnectionStatus, NeedsReauth, RateLimited, utcnow

pytestmark = pytest.mark.slow

SLUG = oauth_cli.SLUG
idp = oauth_cli.idp
write_connector = oauth_cli.write_connector
stored_secret = oauth_cli.stored_secret
revoke_at_provider = oauth_cli.revoke_at_provider
start_cli = oauth_cli.start_cli
read_until = oauth_cli.read_until
connect_with_browser = oauth_cli.connect_with_browser


def test_pkce_loopback_login_through_the_cli_then_vend(idp, isolated):
    cid = connect_with_browser(idp)
    token = subprocess.run(
        [sys.executable, "-m", "valetkey", "token", cid], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(token) > 20
    assert idp.token_requests("authorization_code") == 1
    blob = b"".join(p.read_bytes() for p in isolated.rglob("*") if p.is_file())
    assert token.encode() not in blob


def test_device_login_through_the_cli(idp):
    proc = start_cli("connect", SLUG, "--device", "--json")
    code = read_until(proc.stderr, r"^\s+([A-Z0-9-]{6,})\s*$").group(1)
    idp.approve_device(code)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    conn = json.loads(out)
    assert conn["status"] == "ACTIVE"
    assert idp.token_requests("urn:ietf:params:oauth:grant-type:device_code") >= 1


def test_refresh_rotates_and_the_old_refresh_token_is_dead(idp):
    cid = connect_with_browser(idp)

    async def scenario():
        kernel = load()
        async with kernel:
            broker = Broker(kernel)
            before = await stored_secret(kernel, cid)
            after = await broker.refresh("ann", cid)
            assert after.refresh_token != before.refresh_token  # rotated
            assert after.access_token != before.access_token
            provider = kernel.credential_provider("oauth2")
            connector = kernel.connectors.get(SLUG)
            with pytest.raises(NeedsReauth):
                await provider.refresh(connector, before)  # the old refresh token is rejected

    asyncio.run(scenario())
    assert idp.token_requests("refresh_token") == 2


class Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_dead_grant_flips_to_needs_reauth_with_one_signed_webhook(idp, tmp_path, monkeypatch):
    from valetkey_notify_webhook import verify_signature

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.got = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    config = tmp_path / "hook.toml"
    config.write_text(f"""
[plugin.notify-webhook]
url = "http://127.0.0.1:{receiver.server_address[1]}/hook"
secret = {{ "$env" = "HOOK_SECRET" }}
""")
    monkeypatch.setenv("HOOK_SECRET", "whsec-test-0123456789")
    monkeypatch.setenv("VALETKEY_CONFIG", str(config))
    cid = connect_with_browser(idp)

    async def kill_grant():
        kernel = load()
        async with kernel:
            secret = await stored_secret(kernel, cid)
            revoke_at_provider(idp, secret.refresh_token, idp.native_client_id)

    asyncio.run(kill_grant())
    proc = subprocess.run(
        [sys.executable, "-m", "valetkey", "refresh", cid],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "needs re-authorization" in proc.stderr and "Traceback" not in proc.stderr
    listed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "valetkey", "connections", "show", cid, "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert listed["status"] == ConnectionStatus.NEEDS_REAUTH.value
    receiver.shutdown()
    ((headers, body),) = Receiver.got
    verify_signature("whsec-test-0123456789", headers, body)
    event = json.loads(body)
    assert (event["kind"], event["connection_id"], event["owner"]) == ("needs_reauth", cid, "ann")
    assert "valetkey connect idp" in event["data"]["connect_command"]


async def _due_connection(broker, kernel, cid) -> None:
    """Make the stored credential look close to expiry (10 s; the lead is 30 s here)."""
    secret = await stored_secret(kernel, cid)
    await broker.store_secret(
        "ann", cid, secret.with_changes(expires_at=utcnow() + timedelta(seconds=10))
    )


def broker_config(tmp_path) -> str:
    config = tmp_path / "broker.toml"
    config.write_text("[plugin.broker]\nrefresh_lead = 30\n")
    return str(config)


def test_fifty_concurrent_vends_make_one_token_request(idp, tmp_path, monkeypatch):
    monkeypatch.setenv("VALETKEY_CONFIG", broker_config(tmp_path))
    cid = connect_with_browser(idp)

    async def scenario():
        kernel = load()
        async with kernel:
            broker = Broker(kernel, kernel.plugin_config("broker"))
            await _due_connection(broker, kernel, cid)
            idp.reset_counts()
            tokens = await asyncio.gather(*(broker.vend("ann", cid) for _ in range(50)))
            return {t.access_token for t in tokens}

    distinct = asyncio.run(scenario())
    assert idp.token_requests("refresh_token") == 1
    assert len(distinct) == 1


def start_serve():
    proc = subprocess.Popen(
        [sys.executable, "-m", "valetkey", "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    url = read_until(proc.stderr, r"serving on (http://127\.0\.0\.1:\d+)").group(1)
    return proc, url


def test_two_serve_processes_on_one_database_make_one_token_request(idp, tmp_path, monkeypatch):
    """Both servers' refresh-ahead schedulers see the credential due as they start, and 50
    vends spread over both race them: the provider still sees exactly one refresh."""
    monkeypatch.setenv("VALETKEY_CONFIG", broker_config(tmp_path))
    cid = connect_with_browser(idp)
    made = json.loads(
        subprocess.run(
            [sys.executable, "-m", "valetkey", "tokens", "create", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )

    async def make_due():
        kernel = load()
        async with kernel:
            await _due_connection(Broker(kernel, kernel.plugin_config("broker")), kernel, cid)

    asyncio.run(make_due())
    idp.reset_counts()  # from here: two refresh-ahead schedulers and 50 vends, one refresh
    servers = [start_serve(), start_serve()]
    try:

        async def vend_everywhere():
            headers = {"Authorization": f"Bearer {made['token']}"}
            async with httpx.AsyncClient(headers=headers, timeout=30) as client:
                calls = [
                    client.post(f"{url}/api/connections/{cid}/token")
                    for _proc, url in servers
                    for _ in range(25)
                ]
                return await asyncio.gather(*calls)

        responses = asyncio.run(vend_everywhere())
        assert {r.status_code for r in responses} == {200}
        assert len({r.json()["token"] for r in responses}) == 1
        assert idp.token_requests("refresh_token") == 1
    finally:
        for proc, _url in servers:
            proc.terminate()
            proc.communicate(timeout=20)


def test_a_rate_profile_of_five_per_minute_sends_no_sixth_request(idp, tmp_path):
    write_connector(idp, rate="[rate]\nrequests = 5\nper_seconds = 60\n")
    cid = connect_with_browser(idp)  # (another process: its own bucket)
    idp.reset_counts()

    async def scenario():
        kernel = load()
        async with kernel:
            broker = Broker(kernel)
            for _ in range(5):
                await broker.refresh("ann", cid)
            with pytest.raises(RateLimited) as info:
                await broker.refresh("ann", cid)
            return str(info.value)

    message = asyncio.run(scenario())
    assert idp.token_requests() == 5
    assert "idp" in message


def test_no_token_reaches_the_logs_or_errors_at_debug(idp, isolated, monkeypatch):
    monkeypatch.setenv("VALETKEY_LOG_LEVEL", "DEBUG")
    cid = connect_with_browser(idp)
    token = subprocess.run(
        [sys.executable, "-m", "valetkey", "token", cid], capture_output=True, text=True, check=True
    )
    refresh = subprocess.run(
        [sys.executable, "-m", "valetkey", "refresh", cid, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    new_token = subprocess.run(
        [sys.executable, "-m", "valetkey", "token", cid], capture_output=True, text=True, check=True
    ).stdout.strip()
    for proc in (token, refresh):
        assert token.stdout.strip() not in proc.stderr
        assert new_token not in proc.stderr
    assert token.stdout.strip() not in refresh.stdout and new_token not in refresh.stdout
    blob = b"".join(p.read_bytes() for p in isolated.rglob("*") if p.is_file())
    assert token.stdout.strip().encode() not in blob and new_token.encode() not in blob


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve_on(port: int):
    proc = subprocess.Popen(
        [sys.executable, "-m", "valetkey", "serve", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    read_until(proc.stderr, r"serving on")
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def served_idp(oidc, monkeypatch, tmp_path):
    """valetkey serve with public_url, a webhook receiver, and the idp connector on the
    'valetkey-server' client (its redirect is serve's /api/oauth/callback)."""
    monkeypatch.setenv(f"VALETKEY_OAUTH_{SLUG.upper()}_CLIENT_ID", oidc.server_client_id)
    monkeypatch.setenv("VALETKEY_OWNER", "ann")
    monkeypatch.setenv("HOOK_SECRET", "whsec-test-0123456789")
    write_connector(oidc)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.got = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "serve.toml"
    config.write_text(f"""
[plugin.broker]
public_url = "http://127.0.0.1:{port}"
[plugin.notify-webhook]
url = "http://127.0.0.1:{receiver.server_address[1]}/hook"
secret = {{ "$env" = "HOOK_SECRET" }}
""")
    monkeypatch.setenv("VALETKEY_CONFIG", str(config))
    made = json.loads(
        subprocess.run(
            [sys.executable, "-m", "valetkey", "tokens", "create", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    proc, url = start_serve_on(port)
    api = httpx.Client(
        base_url=f"{url}/api", timeout=30, headers={"Authorization": f"Bearer {made['token']}"}
    )
    yield oidc, api
    api.close()
    proc.terminate()
    proc.communicate(timeout=20)
    receiver.shutdown()


def test_connect_through_the_rest_api_with_the_authorization_code_flow(served_idp):
    oidc, api = served_idp
    cid = api.post("/connections", json={"connector": SLUG}).json()["id"]
    started = api.post(f"/connections/{cid}/oauth/start").json()
    callback = oidc.approve_authorization(started["authorization_url"])
    assert "/api/oauth/callback?" in callback
    landed = httpx.get(callback, timeout=30)
    assert landed.json() == {"connected": cid, "connector": SLUG}
    assert api.post(f"/connections/{cid}/token").json()["token"]
    replay = httpx.get(callback, timeout=30)  # the state is single-use
    assert replay.status_code == 400
    assert replay.json()["error"]["message"] == "unknown, expired or already used login state"


def test_needs_reauth_webhook_carries_a_link_and_a_device_code_that_completes(served_idp):
    from valetkey_notify_webhook import verify_signature

    oidc, api = served_idp
    cid = api.post("/connections", json={"connector": SLUG}).json()["id"]
    started = api.post(f"/connections/{cid}/oauth/start").json()
    httpx.get(oidc.approve_authorization(started["authorization_url"]), timeout=30)

    async def kill_grant_and_make_due():
        kernel = load()
        async with kernel:
            secret = await stored_secret(kernel, cid)
            revoke_at_provider(oidc, secret.refresh_token, oidc.server_client_id)
            await Broker(kernel).store_secret(
                "ann", cid, secret.with_changes(expires_at=utcnow() + timedelta(seconds=10))
            )

    asyncio.run(kill_grant_and_make_due())
    failed = api.post(f"/connections/{cid}/token")
    assert (failed.status_code, failed.json()["error"]["code"]) == (409, "needs_reauth")
    deadline = time.monotonic() + 20
    while not Receiver.got and time.monotonic() < deadline:
        time.sleep(0.05)
    ((headers, body),) = Receiver.got
    verify_signature("whsec-test-0123456789", headers, body)
    data = json.loads(body)["data"]
    assert data["connect_url"].startswith(oidc.authorization_endpoint)
    assert data["user_code"] and data["verification_uri"].startswith(oidc.issuer)
    oidc.approve_device(data["user_code"])
    while time.monotonic() < deadline + 30:
        if api.get(f"/connections/{cid}").json()["status"] == "ACTIVE":
            break
        time.sleep(0.2)
    assert api.get(f"/connections/{cid}").json()["status"] == "ACTIVE"
    assert api.post(f"/connections/{cid}/token").status_code == 200
    kinds = [json.loads(b)["kind"] for _h, b in Receiver.got]
    assert kinds == ["needs_reauth", "reauthorized"]
