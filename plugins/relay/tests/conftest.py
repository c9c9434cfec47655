"""Fixtures of the relay client's tests: an isolated config folder and home, keyring backends
(the real Secret Service from ``tests/fixtures/secret_service.py``, or no backend at all), the
relay logger's records, and a small real WebSocket relay (:class:`FakeRelay`) for the probe and
the dispatcher loop."""

from __future__ import annotations

import logging
from typing import Any

import pytest

# tests/fixtures is on pytest's pythonpath (see the root pyproject.toml)
from secret_service import secret_service, secret_service_bus  # noqa: F401


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own config folder, home and caches; no OS keyring unless a test asks for one."""
    monkeypatch.setenv("VALETKEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    for var in ("VALETKEY_CONFIG", "VALETKEY_PLUGINS", "VALETKEY_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> Any:
    """keyring with no backend at all (a CI runner, a container): fail.Keyring."""
    import keyring
    import keyring.core
    from keyring.backends import fail

    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    backend = fail.Keyring()
    keyring.set_keyring(backend)
    return backend


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def relay_log(caplog: pytest.LogCaptureFixture) -> Any:
    """The ``valetkey.relay`` logger's records in this test: ``relay_log.messages(level)``."""
    caplog.set_level(logging.DEBUG, logger="valetkey.relay")

    class Messages:
        @staticmethod
        def messages(level: int = logging.DEBUG) -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == "valetkey.relay" and r.levelno >= level
            ]

    return Messages()


class FakeRelay:
    """A real WebSocket server on 127.0.0.1 standing in for a relay host: it accepts the machine
    token ``token`` (else 401) and hands each accepted connection to the test."""

    relay_id = "rly_fake"

    def __init__(self, token: str = "vkm_" + "f" * 43, max_size: int = 4 * 1024 * 1024) -> None:
        import asyncio

        self.token = token
        self.relay_ids = {self.relay_id}
        self.max_size = max_size
        self.connections: asyncio.Queue[Any] = asyncio.Queue()
        self.handshakes: list[dict[str, str]] = []
        self._server: Any = None

    async def __aenter__(self) -> FakeRelay:
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._authenticate,
            max_size=self.max_size,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return self.url_of(self.relay_id)

    def url_of(self, relay_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/relay/{relay_id}/"

    def _authenticate(self, connection: Any, request: Any) -> Any:
        self.handshakes.append(dict(request.headers.raw_items()))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return connection.respond(401, "machine token rejected\n")
        if request.path not in {f"/relay/{rid}/ws/" for rid in self.relay_ids}:
            return connection.respond(404, "no such relay\n")
        return None

    async def _handler(self, connection: Any) -> None:
        await self.connections.put(connection)
        await connection.wait_closed()

    async def next_connection(self, timeout: float = 10.0) -> Any:
        import asyncio

        return await asyncio.wait_for(self.connections.get(), timeout)


@pytest.fixture
async def fake_relay() -> Any:
    async with FakeRelay() as relay:
        yield relay
