"""Issue 6 (items 1 and 2) end to end: ``valetkey serve`` with the boxes plugin, the docker
runtime on a real dockerd (tests/fixtures/dockerd.py) and sign-in through the real oidc-provider
(tests/fixtures/oidc), driven in headless Chromium (Debian chromium + chromedriver, selenium):

- an admin signs in at ``/admin`` (the provider's real login and consent pages), sees the box
  created over MCP (its description escaped), creates a join token and destroys the box;
- an allowed, verified person opens a box's auth link, signs in, pastes the code: the box is
  ready; the same person gets 403 at ``/admin``;
- without a provider, ``serve`` says at start that activation is open.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import anyio
import browser  # tests/fixtures (on pythonpath)
import httpx
import pytest
from dockerd import docker_host, dockerd  # tests/fixtures (on pythonpath)

pytestmark = [pytest.mark.slow]

__all__ = ["docker_host", "dockerd"]

LOGIN = (
    "echo 'Open https://login.example.test/device?session=abc to sign in'; "
    "read code; echo valetkey-ready; echo 'session: https://session.example.test/s/42'; "
    "exec sleep 3600"
)
CODE = "oauth-code-6a2b-never-in-chat"
ADMIN = "admin@corp.test"
ALLOWED = "alice@corp.test"
SECRET_ENV = "VALETKEY_TEST_OIDC_SECRET"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path, port, image, oidc_server=None):
    oidc = ""
    if oidc_server is not None:
        oidc = f"""
admins = ["{ADMIN}"]
[plugin.boxes.oidc]
issuer = "{oidc_server.issuer}"
client_id = "{oidc_server.web_client_id}"
client_secret = {{ "$env" = "{SECRET_ENV}" }}
allowed_domains = ["corp.test"]
"""
    path.write_text(f"""
[plugin.boxes]
default_image = "{image}"
public_url = "http://127.0.0.1:{port}"
{oidc}
[plugin.boxes.login."*"]
command = ["sh", "-c", {json.dumps(LOGIN)}]
ready_timeout = 15.0

[plugin.runtime-docker]
stop_timeout = 1
""")


class Server:
    def __init__(self, port):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None
        self.stderr = ""

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
            _, self.stderr = self.proc.communicate(timeout=30)
            at = self.stderr.find("Traceback")
            assert at < 0, self.stderr[max(0, at - 2000) : at + 4000]


@pytest.fixture
def fleet(dockerd, docker_host, oidc_server, tmp_path, monkeypatch, isolated):
    port = free_port()
    config = tmp_path / "plugins.toml"
    write_config(config, port, dockerd.image, oidc_server)
    monkeypatch.setenv("VALETKEY_CONFIG", str(config))
    monkeypatch.setenv(SECRET_ENV, oidc_server.web_client_secret)
    monkeypatch.setenv("VALETKEY_LOG_LEVEL", "DEBUG")
    server = Server(port).start()
    yield server
    server.stop()
    # nothing secret in what serve wrote (DEBUG included)
    assert oidc_server.web_client_secret not in server.stderr
    assert "box activation is open" not in server.stderr


async def _call(url, tool, **args):
    from mcp import Client

    async with Client(f"{url}/mcp") as client:
        result = await client.call_tool(tool, args)
        if result.is_error:
            return result.content[0].text
        return result.structured_content


def call(url, tool, **args):
    return anyio.run(lambda: _call(url, tool, **args))


def chromium():
    return browser.chromium("390,844")  # a phone


def sign_in_at_provider(driver, issuer, account, back_to):
    """Answer the provider's login and consent pages until the browser is back at ``back_to``."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + 30
    while driver.current_url.startswith(issuer):
        assert time.monotonic() < deadline, driver.page_source[:2000]
        logins = driver.find_elements(By.NAME, "login")
        if logins:
            logins[0].send_keys(account)
            driver.find_element(By.NAME, "password").send_keys("any")
        before = driver.current_url
        buttons = driver.find_elements(By.CSS_SELECTOR, "button[type=submit]")
        assert buttons, driver.page_source[:2000]
        buttons[0].click()
        wait_until(
            lambda before=before: (
                driver.current_url != before or not driver.current_url.startswith(issuer)
            )
        )
    assert driver.current_url.startswith(back_to), driver.current_url


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_an_admin_signs_in_creates_a_join_token_and_destroys_a_box(fleet, oidc_server, dockerd):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    created = call(
        fleet.url, "create_box", box_id="fleet-web", description="<script>alert(1)</script>"
    )
    assert created["status"] == "pending", created
    driver = chromium()
    try:
        driver.get(f"{fleet.url}/admin/")
        assert driver.current_url.startswith(oidc_server.issuer)  # sent to sign in
        sign_in_at_provider(driver, oidc_server.issuer, ADMIN, f"{fleet.url}/admin/")
        assert driver.find_element(By.TAG_NAME, "h1").text == "valetkey fleet"
        assert ADMIN in driver.find_element(By.TAG_NAME, "header").text
        assert (
            "fleet-web"
            in driver.find_element(By.ID, "boxes")
            .find_element(By.XPATH, "following-sibling::div[1]")
            .text
        )
        # the untrusted description is text, not markup
        assert not driver.find_elements(By.TAG_NAME, "script")
        assert "&lt;script&gt;" in driver.page_source
        viewport = driver.find_element(By.CSS_SELECTOR, "meta[name=viewport]")
        assert "width=device-width" in viewport.get_attribute("content")

        Select(driver.find_element(By.ID, "ttl")).select_by_value("1h")
        driver.find_element(By.XPATH, "//button[text()='Create join token']").click()
        wait_until(lambda: driver.find_elements(By.ID, "token"))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Join token created"
        token = driver.find_element(By.ID, "token").text.strip()
        assert token.startswith("vkjoin_") and len(token) == len("vkjoin_") + 43
        command = driver.find_element(By.ID, "command").text
        assert command.endswith("--token-stdin") and token not in command

        driver.find_element(By.LINK_TEXT, "Back to the fleet").click()
        wait_until(lambda: driver.find_elements(By.ID, "tokens"))
        assert token not in driver.page_source  # shown once
        tokens_table = driver.find_element(By.ID, "tokens").find_element(
            By.XPATH, "following-sibling::div[1]"
        )
        assert "valid" in tokens_table.text

        driver.find_element(By.XPATH, "//button[text()='Destroy fleet-web']").click()
        wait_until(lambda: "The box was destroyed." in driver.page_source)
        assert "fleet-web" not in driver.find_element(By.ID, "boxes").text
    finally:
        driver.quit()
    gone = call(fleet.url, "get_box", box_id="fleet-web")
    assert isinstance(gone, str) and gone.endswith("no box 'fleet-web'")


def test_an_allowed_person_activates_a_box_and_is_no_admin(fleet, oidc_server, dockerd):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    created = call(fleet.url, "create_box", box_id="fleet-act")
    auth_url = created["auth_url"]
    # without a session the auth page only sends people to sign in
    plain = httpx.get(auth_url)
    assert plain.status_code == 303 and plain.headers["location"].startswith("/login/?return_to=")
    driver = chromium()
    try:
        driver.get(auth_url)
        sign_in_at_provider(driver, oidc_server.issuer, ALLOWED, auth_url)
        deadline = time.monotonic() + 15
        while "login.example.test" not in driver.page_source:
            assert time.monotonic() < deadline, driver.page_source[:2000]
            time.sleep(0.3)
            driver.refresh()
        assert "Sign the box fleet-act in" in driver.find_element(By.TAG_NAME, "h1").text
        driver.find_element(By.ID, "code").send_keys(CODE)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        try:
            WebDriverWait(driver, 20, ignored_exceptions=browser.navigating()).until(
                ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "is ready")
            )
        except TimeoutException:
            pytest.fail(f"not ready: {driver.find_element(By.TAG_NAME, 'main').text}")
        assert CODE not in driver.page_source
        # the same signed-in person is not an admin
        driver.get(f"{fleet.url}/admin/")
        assert driver.find_element(By.TAG_NAME, "h1").text == "Not an admin"
        cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
        assert cookies["valetkey_session"]
        denied = httpx.get(
            f"{fleet.url}/admin/", cookies={"valetkey_session": cookies["valetkey_session"]}
        )
        assert denied.status_code == 403
        session = next(c for c in driver.get_cookies() if c["name"] == "valetkey_session")
        assert session["httpOnly"] and session["sameSite"] == "Lax"
    finally:
        driver.quit()
    info = call(fleet.url, "get_box", box_id="fleet-act")
    assert info["status"] == "ready"
    call(fleet.url, "destroy_box", box_id="fleet-act")


def test_serve_says_activation_is_open_without_a_provider(
    dockerd, docker_host, tmp_path, monkeypatch, isolated
):
    port = free_port()
    config = tmp_path / "plugins.toml"
    write_config(config, port, dockerd.image)
    monkeypatch.setenv("VALETKEY_CONFIG", str(config))
    server = Server(port).start()
    try:
        assert httpx.get(f"{server.url}/login/").status_code == 404
        assert httpx.get(f"{server.url}/admin/").status_code == 404
        assert httpx.get(f"{server.url}/auth/{'0' * 64}").status_code == 404  # open: the page
    finally:
        server.stop()
    assert "box activation is open: no OIDC provider configured" in server.stderr
