"""Fixtures for broker tests: a kernel on a temp home with the workspace's real store, sealer and
secret store, plus in-process test plugins — a connector catalog and a credential provider that
counts its refresh calls (a stand-in for the provider side only; the real OAuth plugin against a
real authorization server is exercised in the end-to-end tests)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from valetkey.kernel import load
from valetkey.policy import parse_policy
from valetkey_hookspecs import (
    AuthSpec,
    AuthType,
    Connector,
    NeedsReauth,
    RateLimited,
    Secret,
    hookimpl,
    utcnow,
)

WORKSPACE = ["store-sqlite", "secrets-keyring", "sealer-local"]


class CountingProvider:
    """Issues access-N tokens valid for ``ttl`` seconds; counts refresh calls."""

    name = "oauth2"
    auth_types = (AuthType.OAUTH2,)

    def __init__(self) -> None:
        self.calls = 0
        self.ttl = 3600.0
        self.delay = 0.05
        self.fail: Exception | None = None

    async def acquire(self, request):
        return self._issue()

    async def refresh(self, connector, secret):
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return self._issue(keep_refresh=secret.refresh_token)

    def _issue(self, keep_refresh=None):
        n = self.calls
        return Secret(
            access_token=f"access-{n}-abcdefgh",
            refresh_token=keep_refresh or f"refresh-{n}-abcdefgh",
            expires_at=utcnow() + timedelta(seconds=self.ttl),
        )


class Collector:
    name = "collector"

    def __init__(self) -> None:
        self.got = []

    async def notify(self, notification):
        self.got.append(notification)


class TestPlugin:
    def __init__(self) -> None:
        self.provider = CountingProvider()
        self.notifier = Collector()

    @hookimpl
    def valetkey_register_connectors(self, register):
        register(
            Connector(
                slug="acme",
                name="Acme",
                auth=AuthSpec(
                    type=AuthType.OAUTH2,
                    authorize_url="https://acme.example/auth",
                    token_url="https://acme.example/token",
                ),
            )
        )
        register(Connector(slug="keyco", name="KeyCo", auth=AuthSpec(type=AuthType.API_KEY)))

    @hookimpl
    def valetkey_register_credential_providers(self, register):
        register("oauth2", lambda ctx: self.provider)

    @hookimpl
    def valetkey_register_notifiers(self, register):
        register("collector", lambda ctx: self.notifier)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "home"


@pytest.fixture
def plugin():
    return TestPlugin()


@pytest.fixture
def make_kernel(home, plugin):
    def make(**policy):
        doc = {"autoload": False, "enable": [*WORKSPACE, "broker", "test"], **policy}
        return load(policy=parse_policy(doc), home=home, extra_plugins={"test": plugin})

    return make


__all__ = ["NeedsReauth", "RateLimited"]


@pytest.fixture
def serve(make_kernel):
    """Run the whole ``valetkey serve`` app (this kernel) under uvicorn on a random 127.0.0.1
    port in a thread; yields (base_url, kernel)."""
    import socket
    import threading
    import time

    import uvicorn

    from valetkey.serve.app import build_app

    servers = []

    def start(**policy):
        kernel = make_kernel(**policy)
        app = build_app(kernel)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        servers.append((server, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}", kernel

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)
