"""Fixtures of the relay host's tests: an isolated home with the workspace's real store, the host
app under uvicorn on a random 127.0.0.1 port (real sockets), relays created through the real
connect page, access tokens added to the same SQLite store, and the real CLI in subprocesses."""

from __future__ import annotations

import html
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from valetkey.kernel import load
from valetkey.policy import parse_policy

ENABLED = ["store-sqlite", "secrets-keyring", "sealer-local", "relay", "relay-server"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("VALETKEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    for var in ("VALETKEY_CONFIG", "VALETKEY_PLUGINS", "VALETKEY_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def anyio_backend():
    return "asyncio"


def run_valetkey(args, env, cwd, stdin=""):
    """The real ``valetkey`` CLI in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "valetkey", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def make_kernel(home):
    return load(policy=parse_policy({"autoload": False, "enable": ENABLED}), home=home)


@dataclass
class Host:
    """A running relay host."""

    url: str
    home: Any
    app: Any

    @property
    def hub(self) -> Any:
        return self.app.state.hub

    def create_relay(self, label: str = "laptop") -> tuple[str, str, str]:
        """``(relay_id, base_url, machine_token)`` through the real connect page."""
        page = httpx.post(f"{self.url}/connect", data={"label": label}, timeout=10)
        assert page.status_code == 200, page.text
        match = re.search(r"<pre id=attach-line>([^<]*)</pre>", page.text)
        assert match, page.text
        base, token = html.unescape(match.group(1)).split()
        relay_id = base.rstrip("/").rsplit("/", 1)[1]
        return relay_id, base, token

    async def add_access_token(self, relay_id: str, name: str = "t") -> str:
        """A fresh access token for ``relay_id``, stored through a second kernel on the same
        database (as ``valetkey relay token create`` does from another process)."""
        import secrets

        from valetkey_hookspecs.types import RelayAccessToken
        from valetkey_relay.protocol import new_access_token, token_hash

        token = new_access_token()
        kernel = make_kernel(self.home)
        async with kernel:
            await kernel.store.relays.add_access_token(
                RelayAccessToken(
                    id=f"rat_{secrets.token_hex(6)}",
                    relay_id=relay_id,
                    token_hash=token_hash(token),
                    name=name,
                )
            )
        return token


@pytest.fixture
def relay_host(isolated) -> Iterator[Any]:
    """``start(**config)`` runs a relay host app in a thread; stopped at the end."""
    import uvicorn

    from valetkey_relay_server.app import build_app, uvicorn_config
    from valetkey_relay_server.config import RelayServerConfig

    servers = []
    home = isolated / "home"

    def start(**config: Any) -> Host:
        cfg = RelayServerConfig(**config)
        app = build_app(make_kernel(home), cfg)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn_config(app, cfg))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "relay host did not start"
            time.sleep(0.01)
        servers.append((server, thread))
        return Host(f"http://127.0.0.1:{sock.getsockname()[1]}", home, app)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)
