"""The management API of a real daemon process, over its real Unix socket: what a registration
returns, every kind of bad input answered 4xx with a message and nothing changed, the socket and
folder permissions, the route table, restore failures in health, and shutdown."""

from __future__ import annotations

import json
import os
import stat
import threading

import httpx
import msgspec
import pytest

from valetkey_proxy import lockfile
from valetkey_proxy.client import ensure_running
from valetkey_proxy.runs import RunSpec

pytestmark = pytest.mark.slow

A_TOKEN = "ab" * 32


@pytest.fixture
def raw(env, daemon):
    """A plain httpx client on the daemon's socket (to send what DaemonClient never would)."""
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(env.paths.sock)), base_url="http://daemon"
    ) as client:
        yield client


def test_socket_is_0600_and_folder_0700(env, daemon):
    assert stat.S_ISSOCK(env.paths.sock.stat().st_mode)
    assert (env.paths.sock.stat().st_mode & 0o777) == 0o600
    assert (env.paths.root.stat().st_mode & 0o777) == 0o700
    assert (env.paths.info.stat().st_mode & 0o777) == 0o600
    assert (env.paths.logs.stat().st_mode & 0o777) == 0o700


def test_health_and_register_response(env, daemon):
    health = daemon.health()
    assert {"pid", "proxy_port", "run_count", "started_at", "version"} <= set(health)
    assert health["pid"] == lockfile.read(env.paths.info).pid and health["run_count"] == 0
    reg = daemon.register_run({"owner": "ann", "run_id": "r1", "some_future_field": [1, 2]})
    assert len(reg["auth_token"]) == 64 and int(reg["auth_token"], 16) >= 0
    assert reg["proxy_port"] == health["proxy_port"] and reg["run_id"] == "r1"
    assert reg["env"] == {}
    assert reg["ca_cert"].endswith("ca.pem") and os.path.exists(reg["ca_cert"])
    assert reg["ca_bundle"].endswith("bundle.pem") and os.path.exists(reg["ca_bundle"])
    runs = daemon.list_runs()
    assert [r["run_id"] for r in runs] == ["r1"]
    assert reg["auth_token"] not in json.dumps(runs)
    assert daemon.health()["run_count"] == 1
    # re-registering with the token keeps it and replaces the run
    again = daemon.register_run({"owner": "ann", "run_id": "r1", "auth_token": reg["auth_token"]})
    assert again["auth_token"] == reg["auth_token"] and len(daemon.list_runs()) == 1
    # a given (well-formed) token is accepted for a new run
    fresh = daemon.register_run({"owner": "ann", "auth_token": A_TOKEN})
    assert fresh["auth_token"] == A_TOKEN
    updated = daemon.update_run(A_TOKEN, "container-1")
    assert updated["container_id"] == "container-1"
    assert daemon.unregister_run(A_TOKEN)["run_id"] == fresh["run_id"]


BAD = [
    ("POST", "/v1/runs", b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/runs", b"[1, 2]", 400, "JSON object"),
    ("POST", "/v1/runs", b"", 400, "JSON object"),
    ("POST", "/v1/runs", b'{"grants": []}', 400, "owner"),
    ("POST", "/v1/runs", b'{"owner": "ann", "grants": "github"}', 400, "grants"),
    ("POST", "/v1/runs", b'{"owner": 7}', 400, "owner"),
    ("POST", "/v1/runs", b'{"owner": "ann", "auth_token": "short"}', 400, "64 lower-case hex"),
    ("POST", "/v1/runs", b'{"owner": "ann", "run_id": "../etc"}', 400, "run_id"),
    ("POST", "/v1/runs", b'{"owner": "ann", "network_policy": "open"}', 400, "expected one of"),
    ("POST", "/v1/runs", b'{"owner": "ann", "grants": ["no-such-connector"]}', 404, "no-such"),
    ("POST", "/v1/runs", b'{"owner": "ann", "grants": ["github"]}', 404, "no github connection"),
    ("POST", "/v1/runs", b'{"owner": "ann", "run_id": "keep"}', 409, "registered already"),
    ("PATCH", "/v1/runs/" + "cd" * 32, b'{"container_id": "x"}', 404, "no run"),
    ("PATCH", "/v1/runs/not-a-token", b'{"container_id": "x"}', 404, "no run"),
    ("DELETE", "/v1/runs/" + "cd" * 32, b"", 404, "no run"),
    ("POST", "/v1/routes/agent", b'{"services": {"web": "ftp://x"}}', 400, "http"),
    ("POST", "/v1/routes/agent", b'{"services": []}', 400, "services"),
    ("POST", "/v1/routes/agent", b'{"services": {"a.b": "http://x"}}', 400, "not valid"),
    ("POST", "/v1/routes/bad%20agent", b'{"services": {"a": "http://x"}}', 400, "agent"),
    ("DELETE", "/v1/routes/nobody", b"", 404, "no routes"),
    ("GET", "/v1/nope", b"", 404, "no endpoint"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD)
def test_bad_input_is_4xx_with_a_message_and_changes_nothing(
    daemon, raw, method, path, body, status, message
):
    keep = daemon.register_run({"owner": "ann", "run_id": "keep"})
    before = daemon.list_runs()
    response = raw.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]
    assert daemon.list_runs() == before
    assert daemon.health()["run_count"] == 1
    assert keep["auth_token"] not in response.text


def test_patch_with_bad_types_changes_nothing(daemon, raw):
    reg = daemon.register_run({"owner": "ann", "run_id": "p"})
    daemon.update_run(reg["auth_token"], "container-7")
    before = daemon.list_runs()
    for body, message in (
        (b'{"container_id": 5}', "non-empty string"),
        (b'{"container_id": ""}', "non-empty string"),
        (b"nope", "JSON"),
        (b'{"containerId": "x"}', "container_id is required"),  # a typo never clears it
        (b"{}", "container_id is required"),
    ):
        response = raw.patch(f"/v1/runs/{reg['auth_token']}", content=body)
        assert response.status_code == 400, response.text
        assert message in response.json()["message"]
    assert daemon.list_runs() == before
    assert before[0]["container_id"] == "container-7"


def test_oversize_body_is_413(daemon, raw):
    before = daemon.list_runs()
    big = json.dumps({"owner": "ann", "network_allow": ["x" * 70_000]}).encode()
    response = raw.post("/v1/runs", content=big)
    assert response.status_code == 413 and "larger than" in response.json()["message"]

    def chunks():  # no Content-Length: the limit holds while streaming too
        yield b'{"owner": "ann", "padding": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}'

    response = raw.post("/v1/runs", content=chunks())
    assert response.status_code == 413
    assert daemon.list_runs() == before


def test_route_table_serves_an_agents_services_by_name(daemon):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Service(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"service saw {self.path} host={self.headers['Host']}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    service = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    try:
        port = daemon.health()["proxy_port"]
        web = f"http://127.0.0.1:{service.server_address[1]}/app"
        services = {"web": web, "db-ui": "https://localhost:8081/x"}
        assert daemon.register_routes("agent-1", services)["services"] == services
        assert daemon.health()["route_agents"] == 1
        proxy = f"http://127.0.0.1:{port}"
        got = httpx.get(f"{proxy}/page?q=1", headers={"Host": f"web.agent-1.localhost:{port}"})
        assert got.status_code == 200
        assert got.text == f"service saw /app/page?q=1 host=127.0.0.1:{service.server_address[1]}"
        unknown = httpx.get(f"{proxy}/page", headers={"Host": f"api.agent-1.localhost:{port}"})
        assert unknown.status_code == 404
        assert daemon.unregister_routes("agent-1")["removed"] is True
        assert daemon.health()["route_agents"] == 0
        gone = httpx.get(f"{proxy}/page", headers={"Host": f"web.agent-1.localhost:{port}"})
        assert gone.status_code == 404
    finally:
        service.shutdown()


def test_restore_failures_are_skipped_and_reported(env):
    env.paths.ensure()
    ok = RunSpec(owner="ann", run_id="ok", auth_token="0a" * 32)
    broken = RunSpec(owner="ann", run_id="broken", auth_token="0b" * 32, grants=["github"])
    env.paths.runs.write_bytes(msgspec.json.encode([ok, broken]))  # the legacy bare array
    with ensure_running(env.home) as client:
        env.remember()
        health = client.health()
        assert [r["run_id"] for r in client.list_runs()] == ["ok"]
    assert [f["run_id"] for f in health["restore_failures"]] == ["broken"]
    assert "no github connection" in health["restore_failures"][0]["error"]
    assert "run broken not restored" in env.paths.log.read_text()


def test_shutdown_endpoint_flushes_and_cleans_up(env, daemon):
    pid = daemon.health()["pid"]
    reg = daemon.register_run({"owner": "ann", "run_id": "persisted"})
    daemon.shutdown()
    assert env.wait_gone(pid)
    assert not env.paths.sock.exists() and not env.paths.info.exists()
    saved = json.loads(env.paths.runs.read_text())
    assert saved["version"] == 1
    assert saved["runs"][0]["run_id"] == "persisted"
    assert saved["runs"][0]["auth_token"] == reg["auth_token"]


def test_sigterm_is_graceful(env, daemon):
    import signal

    pid = daemon.health()["pid"]
    daemon.register_run({"owner": "ann", "run_id": "t"})
    os.kill(pid, signal.SIGTERM)
    assert env.wait_gone(pid)
    assert not env.paths.sock.exists() and not env.paths.info.exists()
    assert json.loads(env.paths.runs.read_text())["runs"][0]["run_id"] == "t"
    assert "proxy daemon stopped" in env.paths.log.read_text()
