"""``valetkey serve`` end to end: a real process on 127.0.0.1, /healthz over HTTP, the MCP
endpoint through the official MCP client, services running, clean exit on SIGTERM and SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def start_server(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "valetkey", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if match := re.search(r"serving on (http://127\.0\.0\.1:\d+)", line):
            return proc, match.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not start: rc={proc.poll()} {proc.stderr.read()}")


def wait_ready(url: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(f"{url}/healthz", timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.anyio
async def test_serve_answers_healthz_and_mcp_then_stops_on_sigterm(isolated):
    from mcp import Client

    proc, url = start_server()
    try:
        health = wait_ready(url)
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok" and body["version"] == "0.1.0"
        async with Client(f"{url}/mcp") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "valetkey_status" in tools
            result = await client.call_tool("valetkey_status", {})
            assert not result.is_error
            assert "store-sqlite" in result.structured_content["plugins"]
        assert (isolated / "valetkey.db").exists()  # the lifespan opened the default store
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_serve_stops_cleanly_on_sigint():
    proc, url = start_server()
    wait_ready(url)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_every_route_refuses_a_foreign_host_header_and_allow_host_admits_one():
    """DNS-rebinding protection on the whole app, not only /mcp."""
    proc, url = start_server("--allow-host", "valetkey.internal")
    try:
        wait_ready(url)
        for path in ("/healthz", "/mcp"):
            response = httpx.post(
                f"{url}{path}",
                headers={"Host": "evil.example", "Content-Type": "application/json"},
                content=b"{}",
            )
            assert response.status_code == 400, path
            assert response.text == "Invalid host header"
        ok = httpx.get(f"{url}/healthz", headers={"Host": "valetkey.internal:8760"})
        assert ok.status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_a_store_that_cannot_open_is_one_line_before_listening(run_cli, tmp_path):
    config = tmp_path / "p.toml"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    config.write_text(f'[plugin.store-sqlite]\npath = "{blocker}/db.sqlite"\n')
    proc = run_cli("serve", "--port", "0", env={"VALETKEY_CONFIG": str(config)}, timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "serving on" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"valetkey: error: cannot create the sqlite store {blocker}/db.sqlite: Not a directory"
    )


def test_a_port_in_use_is_one_clear_line(run_cli):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"valetkey: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_a_bad_port_is_refused(run_cli):
    proc = run_cli("serve", "--port", "70000")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "valetkey: error: --port 70000 is not a TCP port (0-65535)"
