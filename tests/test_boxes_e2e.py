"""Issue 5's acceptance end to end: ``valetkey serve`` with the boxes plugin and the docker
runtime against a real dockerd (tests/fixtures/dockerd.py), driven through the official MCP
client over HTTP; the auth page over HTTP and in headless Chromium (Debian chromium +
chromedriver, through selenium); restore after a restart; a box with a grant reaching a local
upstream through the proxy with the real header injected while the box holds a placeholder."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import browser  # tests/fixtures (on pythonpath)
import httpx
import pytest
from dockerd import docker_host, dockerd  # tests/fixtures (on pythonpath)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

__all__ = ["docker_host", "dockerd"]

LOGIN = (
    "echo 'Open https://login.example.test/device?session=abc to sign in'; "
    "read code; echo valetkey-ready; echo 'session: https://session.example.test/s/42'; "
    "exec sleep 3600"
)
CODE = "oauth-code-5f1e-never-in-chat"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path, port, image, extra="", boxes=""):
    path.write_text(f"""
[plugin.boxes]
{boxes}
default_image = "{image}"
public_url = "http://127.0.0.1:{port}"
[plugin.boxes.login."*"]
command = ["sh", "-c", {json.dumps(LOGIN)}]
ready_timeout = 15.0

[plugin.runtime-docker]
stop_timeout = 1
{extra}
""")


class Server:
    def __init__(self, port):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "valetkey", "serve", "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "valetkey serve did not start"
            time.sleep(0.1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            _, err = self.proc.communicate(timeout=30)
            assert "Traceback" not in err, err


@pytest.fixture
def served(dockerd, docker_host, tmp_path, monkeypatch, isolated):
    port = free_port()
    config = tmp_path / "plugins.toml"
    write_config(config, port, dockerd.image)
    monkeypatch.setenv("VALETKEY_CONFIG", str(config))
    server = Server(port).start()
    yield server
    server.stop()


async def call(client, tool, **args):
    result = await client.call_tool(tool, args)
    if result.is_error:
        return result.content[0].text
    return result.structured_content


def auth_form(url):
    """GET the auth page: the CSRF cookie and field, and the page."""
    page = httpx.get(url)
    assert page.status_code == 200, page.text
    field = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return page, field, page.cookies


def wait_for_login_link(url, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        page = httpx.get(url)
        if "login.example.test" in page.text:
            return page
        assert time.monotonic() < deadline, page.text
        time.sleep(0.2)


async def test_boxes_over_mcp_with_the_code_on_the_auth_page(served, dockerd):
    from mcp import Client

    async with Client(f"{served.url}/mcp") as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {
            "create_box",
            "get_box",
            "list_boxes",
            "destroy_box",
            "get_box_logs",
            "exec_box",
        } <= tools
        for bad in ("UPPER", "-x", "a/b", "x" * 64):
            message = await call(client, "create_box", box_id=bad)
            assert isinstance(message, str) and "box id" in message
        created = await call(client, "create_box", box_id="e2e-one", description="for the test")
        assert created["status"] == "pending"
        auth_url = created["auth_url"]
        assert auth_url == f"{served.url}/auth/{created['token']}"
        assert "box 'e2e-one' exists already" in await call(client, "create_box", box_id="e2e-one")

        page = wait_for_login_link(auth_url)
        assert (
            "e2e-one" in page.text and "https://login.example.test/device?session=abc" in page.text
        )
        # blank code and a bad CSRF token: clear errors, nothing sent
        _, field, cookies = auth_form(auth_url)
        blank = httpx.post(auth_url, data={"csrf": field, "code": " "}, cookies=cookies)
        assert blank.status_code == 400 and "it was empty" in blank.text
        forged = httpx.post(auth_url, data={"csrf": "forged", "code": CODE}, cookies=cookies)
        assert forged.status_code == 403 and "expired" in forged.text
        assert (await call(client, "get_box", box_id="e2e-one"))["status"] == "pending"
        unknown = httpx.get(f"{served.url}/auth/{'0' * 64}")
        assert unknown.status_code == 404 and "not valid" in unknown.text
        # the code: browser → valetkey → the box's stdin
        _, field, cookies = auth_form(auth_url)
        done = httpx.post(auth_url, data={"csrf": field, "code": CODE}, cookies=cookies)
        assert done.status_code == 200 and "is ready" in done.text
        assert "https://session.example.test/s/42" in done.text and CODE not in done.text

        info = await call(client, "get_box", box_id="e2e-one")
        assert info["status"] == "ready" and info["session_url"].endswith("/s/42")
        ran = await call(client, "exec_box", box_id="e2e-one", command="echo hi; exit 3")
        assert ran == {"stdout": "hi\n", "stderr": "", "exit_code": 3, "truncated": False}
        logs = (await call(client, "get_box_logs", box_id="e2e-one", tail=50))["result"]
        assert "to sign in" in logs and "valetkey-ready" in logs
        listed = await call(client, "list_boxes")
        assert "e2e-one" in [b["box_id"] for b in listed["result"]]
        assert await call(client, "destroy_box", box_id="e2e-one") == {
            "box_id": "e2e-one",
            "destroyed": True,
        }
        gone = await call(client, "get_box", box_id="e2e-one")
        assert gone.endswith("no box 'e2e-one'")
    client_docker = dockerd.client()
    try:
        assert not [c for c in client_docker.containers.list(all=True) if "e2e-one" in c.name]
    finally:
        client_docker.close()


async def test_restart_restores_sessions_and_drops_a_box_removed_by_hand(served, dockerd):
    from mcp import Client

    async with Client(f"{served.url}/mcp") as client:
        await call(client, "create_box", box_id="stays")
        await call(client, "create_box", box_id="removed")
        gone = await call(client, "get_box", box_id="removed")
    docker = dockerd.client()
    try:
        docker.containers.get(gone["container_id"]).remove(force=True)
    finally:
        docker.close()
    served.stop()
    served.start()
    async with Client(f"{served.url}/mcp") as client:
        deadline = time.monotonic() + 15
        while True:
            listed = [b["box_id"] for b in (await call(client, "list_boxes"))["result"]]
            if "stays" in listed and "removed" not in listed:
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.2)
        assert (await call(client, "get_box", box_id="stays"))["status"] == "pending"
        await call(client, "destroy_box", box_id="stays")


def test_the_auth_page_in_headless_chromium(served, dockerd):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    async def create():
        from mcp import Client

        async with Client(f"{served.url}/mcp") as client:
            return await call(client, "create_box", box_id="browser")

    import anyio

    created = anyio.run(create)
    wait_for_login_link(created["auth_url"])
    driver = browser.chromium()
    try:
        driver.get(created["auth_url"])
        assert "Sign the box browser in" in driver.find_element(By.TAG_NAME, "h1").text
        label = driver.find_element(By.CSS_SELECTOR, "label[for=code]")
        assert label.text == "Code from the sign-in page"
        driver.find_element(By.ID, "code").send_keys(CODE)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        try:
            WebDriverWait(driver, 20, ignored_exceptions=browser.navigating()).until(
                ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "is ready")
            )
        except Exception:
            raise AssertionError(driver.page_source[:3000]) from None
        status = driver.find_element(By.CSS_SELECTOR, "[role=status]").text
        assert "Signed in" in status and CODE not in driver.page_source
    finally:
        driver.quit()

    async def destroy():
        from mcp import Client

        async with Client(f"{served.url}/mcp") as client:
            info = await call(client, "get_box", box_id="browser")
            await call(client, "destroy_box", box_id="browser")
            return info

    assert anyio.run(destroy)["status"] == "ready"


class Api(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_GET(self):
        Api.seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        body = b'{"data": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


async def test_a_box_with_a_grant_gets_the_header_and_holds_a_placeholder(
    dockerd, docker_host, tmp_path, monkeypatch, isolated
):
    from mcp import Client

    api = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    Api.seen = []
    threading.Thread(target=api.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "plugins.toml"
    write_config(
        config,
        port,
        dockerd.image,
        boxes='network = "host"\nallow_host_network = true',
        extra=f"""
[plugin.proxy]
upstream_map = {{ "api.openai.com" = "127.0.0.1:{api.server_address[1]}" }}
""",
    )
    monkeypatch.setenv("VALETKEY_CONFIG", str(config))
    key = "sk-real-openai-key-for-the-box-0123456789"
    added = subprocess.run(
        [sys.executable, "-m", "valetkey", "key", "add", "openai"],
        input=key + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    server = Server(port).start()
    try:
        async with Client(f"{server.url}/mcp") as client:
            created = await call(client, "create_box", box_id="granted", grants=["openai"])
            assert created["status"] == "pending", created
            refused = await call(client, "exec_box", box_id="granted", command="env")
            assert "waiting for its sign-in" in refused  # the login holds the code's stdin
            wait_for_login_link(created["auth_url"])
            _, field, cookies = auth_form(created["auth_url"])
            done = httpx.post(
                created["auth_url"], data={"csrf": field, "code": CODE}, cookies=cookies
            )
            assert "is ready" in done.text
            env = await call(client, "exec_box", box_id="granted", command="env")
            assert key not in json.dumps(env)
            # the proxy run token sits in the box's HTTPS_PROXY: it never leaves through MCP
            proxy_line = re.search(r"^HTTPS_PROXY=(.*)$", env["stdout"], re.M).group(1)
            assert "[REDACTED]" in proxy_line and re.search(r"[0-9a-f]{64}", env["stdout"]) is None
            placeholder = re.search(r"^OPENAI_API_KEY=(vkph_\w+)$", env["stdout"], re.M).group(1)
            fetched = await call(
                client,
                "exec_box",
                box_id="granted",
                command="wget -q -O - http://api.openai.com/v1/models",
            )
            assert fetched["exit_code"] == 0, fetched
            assert json.loads(fetched["stdout"]) == {"data": []}
            assert Api.seen == [{"path": "/v1/models", "authorization": f"Bearer {key}"}]
            assert placeholder not in json.dumps(Api.seen)
            await call(client, "destroy_box", box_id="granted")
    finally:
        server.stop()
        api.shutdown()
        subprocess.run(
            [sys.executable, "-m", "valetkey", "proxy", "stop"], capture_output=True, timeout=30
        )
