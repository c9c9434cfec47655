"""Fixtures for the daemon-side tests: a temp ``VALETKEY_HOME`` with its own ``plugins.toml``
(the workspace's real store, sealer and secret store; the keyring backend forced to fail, so
secrets live encrypted in the home), helpers to run ``python -m valetkey ...`` as a real process,
and a teardown that stops any daemon these tests started in that home (by its pid, from the
home's own ``daemon.json``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from valetkey_proxy import lockfile
from valetkey_proxy.paths import ProxyPaths

BASE_CONFIG = """\
autoload = true
required = ["store-sqlite", "sealer-local", "secrets-keyring"]
[select]
store = "sqlite"
secret_store = "keyring"
sealer = "local"
"""


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Env:
    """A valetkey home for real daemon processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.config_path = tmp / "plugins.toml"
        self.paths = ProxyPaths.for_home(self.home)
        self.started: list[int] = []
        self.write_config()

    def write_config(self, **proxy: object) -> None:
        text = BASE_CONFIG
        if proxy:
            text += "[plugin.proxy]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in proxy.items())
        self.config_path.write_text(text)
        self.config_path.chmod(0o600)

    @property
    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VALETKEY_HOME=str(self.home),
            VALETKEY_CONFIG=str(self.config_path),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
            XDG_CACHE_HOME=str(self.tmp / "cache"),
            VALETKEY_OWNER="ann",
        )
        env.pop("VALETKEY_LOG_LEVEL", None)
        return env

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "valetkey", *args],
            env=self.environ,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
        )
        self.remember()
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def remember(self) -> None:
        info = lockfile.read(self.paths.info)
        if info is not None and info.pid not in self.started:
            self.started.append(info.pid)

    def wait_gone(self, pid: int, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while lockfile.pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def teardown(self) -> None:
        self.remember()
        for pid in self.started:
            if lockfile.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not self.wait_gone(pid, 10):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value) + '"'


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A home for real daemon processes; this process's environment points at it too (so
    ``ensure_running`` in the test starts the daemon with the same config)."""
    e = Env(tmp_path)
    for key, value in e.environ.items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("VALETKEY_LOG_LEVEL", raising=False)
    yield e
    e.teardown()


@pytest.fixture
def daemon(env):
    """A running daemon (started through ``ensure_running``) and its client."""
    from valetkey_proxy.client import ensure_running

    client = ensure_running(env.home)
    env.remember()
    yield client
    client.close()


@pytest.fixture
def front(gate, tmp_path):
    """``async with front() as port``: the real proxy engine (``ProxyServer``) on 127.0.0.1 with
    this test's gate, serving its local endpoints (``/_aws/``, ``/mcp/``) over real sockets."""
    import contextlib

    from valetkey_proxy.ca import LocalCA
    from valetkey_proxy.server import ProxyServer

    @contextlib.asynccontextmanager
    async def serve():
        ca = LocalCA.load_or_create(tmp_path / "ca", sealer=None)
        server = ProxyServer(gate, ca, host="127.0.0.1", port=0)
        await server.start()
        try:
            yield server.port
        finally:
            await server.close()

    return serve
