"""Talking to the daemon over its Unix socket, and starting it when nobody has.

:class:`DaemonClient` (blocking, for the CLI) and :class:`AsyncDaemonClient` speak the
management API documented in :mod:`valetkey_proxy.api`. Errors come back as valetkey errors with
the daemon's message: :class:`~valetkey_hookspecs.InvalidInput` (400/413),
:class:`~valetkey_hookspecs.NotFound` (404 unknown token), :class:`~valetkey_hookspecs.Conflict`,
…; an endpoint the running daemon lacks (it is older than this client) is :class:`NotSupported`,
and no daemon answering is :class:`DaemonUnavailable`.

:func:`ensure_running` returns a client of a healthy daemon, starting one (``python -m valetkey
proxy daemon``, detached, output to ``daemon.log``) under an advisory ``flock`` on
``daemon.lock`` so that any number of concurrent callers — threads or processes — start exactly
one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from valetkey_hookspecs import (
    Conflict,
    InvalidInput,
    NeedsReauth,
    NotFound,
    Revoked,
    RuntimeUnavailable,
    ValetkeyError,
)
from valetkey_hookspecs.redaction import redact_text

from . import lockfile
from .paths import ProxyPaths

BASE_URL = "http://valetkey-daemon"
#: how long ensure_running waits for a daemon it started to answer
START_TIMEOUT = 30.0


class DaemonUnavailable(RuntimeUnavailable):
    """No daemon answers on the socket."""

    code = "daemon_unavailable"


class NotSupported(ValetkeyError):
    """The running daemon is older than this client and lacks an endpoint."""

    code = "not_supported"
    http_status = 501


class DaemonError(ValetkeyError):
    """The daemon answered with an unexpected error."""

    code = "daemon_error"
    http_status = 502


_BY_STATUS: dict[int, type[ValetkeyError]] = {
    400: InvalidInput,
    404: NotFound,
    409: Conflict,
    410: Revoked,
    413: InvalidInput,
}


def _message(response: httpx.Response) -> tuple[str | None, str]:
    try:
        data = response.json()
    except ValueError:
        return None, response.text[:200]
    if isinstance(data, dict):
        return data.get("error"), str(data.get("message", ""))
    return None, ""


class _Base:
    def __init__(self, sock_path: Path | str, timeout: float = 30.0) -> None:
        self.sock_path = Path(sock_path)
        self.timeout = timeout
        self._version: str | None = None

    def _check(self, response: httpx.Response, what: str, version: str | None) -> Any:
        if response.status_code < 300:
            return response.json() if response.content else None
        code, message = _message(response)
        if response.status_code == 404 and code not in ("not_found",):
            raise NotSupported(
                f"{what} is not supported by the running daemon (version {version or 'unknown'});"
                " restart it with 'valetkey proxy stop' to run this version"
            )
        if response.status_code == 409 and code == "needs_reauth":
            raise NeedsReauth(message)
        cls = _BY_STATUS.get(response.status_code, DaemonError)
        raise cls(redact_text(message) or f"daemon answered {response.status_code} to {what}")

    def _unavailable(self, exc: Exception) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"the proxy daemon does not answer on {self.sock_path} ({type(exc).__name__})"
        )


class DaemonClient(_Base):
    """Blocking client of the management API."""

    def __init__(self, sock_path: Path | str, timeout: float = 30.0) -> None:
        super().__init__(sock_path, timeout)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.sock_path)),
            base_url=BASE_URL,
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None, what: str = "") -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        if response.status_code == 404 and self._version is None and path != "/v1/health":
            with contextlib.suppress(ValetkeyError):
                self._version = str(self.health().get("version", ""))
        return self._check(response, what or f"{method} {path}", self._version)

    def health(self) -> dict[str, Any]:
        """``GET /v1/health``."""
        data: dict[str, Any] = self._call("GET", "/v1/health")
        self._version = str(data.get("version", ""))
        return data

    def register_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/runs`` with a RunSpec as a dict; the response (token, port, env…)."""
        result: dict[str, Any] = self._call("POST", "/v1/runs", spec, "registering a run")
        return result

    def list_runs(self) -> list[dict[str, Any]]:
        """``GET /v1/runs``."""
        data = self._call("GET", "/v1/runs", what="listing runs")
        runs: list[dict[str, Any]] = data.get("runs", []) if isinstance(data, dict) else data
        return runs

    def update_run(self, token: str, container_id: str | None) -> dict[str, Any]:
        """``PATCH /v1/runs/{token}``."""
        result: dict[str, Any] = self._call(
            "PATCH", f"/v1/runs/{token}", {"container_id": container_id}, "updating a run"
        )
        return result

    def unregister_run(self, token: str) -> dict[str, Any]:
        """``DELETE /v1/runs/{token}``."""
        result: dict[str, Any] = self._call("DELETE", f"/v1/runs/{token}", what="unregistering")
        return result

    def unregister_run_id(self, run_id: str) -> dict[str, Any]:
        """``DELETE /v1/runs/by-id/{run_id}``."""
        result: dict[str, Any] = self._call(
            "DELETE", f"/v1/runs/by-id/{quote(run_id, safe='')}", what="unregistering"
        )
        return result

    def register_routes(self, agent: str, services: dict[str, str]) -> dict[str, Any]:
        """``POST /v1/routes/{agent}``."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/routes/{agent}", {"services": services}, "registering routes"
        )
        return result

    def unregister_routes(self, agent: str) -> dict[str, Any]:
        """``DELETE /v1/routes/{agent}``."""
        result: dict[str, Any] = self._call(
            "DELETE", f"/v1/routes/{agent}", what="unregistering routes"
        )
        return result

    def shutdown(self) -> None:
        """``POST /v1/shutdown`` (returns once the daemon accepted; it stops right after)."""
        self._call("POST", "/v1/shutdown", {}, "shutdown")


class AsyncDaemonClient(_Base):
    """Asynchronous client of the management API (same methods as :class:`DaemonClient`)."""

    def __init__(self, sock_path: Path | str, timeout: float = 30.0) -> None:
        super().__init__(sock_path, timeout)
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.sock_path)),
            base_url=BASE_URL,
            timeout=timeout,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, body: Any = None, what: str = "") -> Any:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        if response.status_code == 404 and self._version is None and path != "/v1/health":
            with contextlib.suppress(ValetkeyError):
                self._version = str((await self.health()).get("version", ""))
        return self._check(response, what or f"{method} {path}", self._version)

    async def health(self) -> dict[str, Any]:
        """``GET /v1/health``."""
        data: dict[str, Any] = await self._call("GET", "/v1/health")
        self._version = str(data.get("version", ""))
        return data

    async def register_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/runs``."""
        result: dict[str, Any] = await self._call("POST", "/v1/runs", spec, "registering a run")
        return result

    async def list_runs(self) -> list[dict[str, Any]]:
        """``GET /v1/runs``."""
        data = await self._call("GET", "/v1/runs", what="listing runs")
        runs: list[dict[str, Any]] = data.get("runs", []) if isinstance(data, dict) else data
        return runs

    async def update_run(self, token: str, container_id: str | None) -> dict[str, Any]:
        """``PATCH /v1/runs/{token}``."""
        result: dict[str, Any] = await self._call(
            "PATCH", f"/v1/runs/{token}", {"container_id": container_id}, "updating a run"
        )
        return result

    async def unregister_run(self, token: str) -> dict[str, Any]:
        """``DELETE /v1/runs/{token}``."""
        result: dict[str, Any] = await self._call(
            "DELETE", f"/v1/runs/{token}", what="unregistering"
        )
        return result

    async def unregister_run_id(self, run_id: str) -> dict[str, Any]:
        """``DELETE /v1/runs/by-id/{run_id}``."""
        result: dict[str, Any] = await self._call(
            "DELETE", f"/v1/runs/by-id/{quote(run_id, safe='')}", what="unregistering"
        )
        return result

    async def register_routes(self, agent: str, services: dict[str, str]) -> dict[str, Any]:
        """``POST /v1/routes/{agent}``."""
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/routes/{agent}", {"services": services}, "registering routes"
        )
        return result

    async def unregister_routes(self, agent: str) -> dict[str, Any]:
        """``DELETE /v1/routes/{agent}``."""
        result: dict[str, Any] = await self._call(
            "DELETE", f"/v1/routes/{agent}", what="unregistering routes"
        )
        return result

    async def shutdown(self) -> None:
        """``POST /v1/shutdown``."""
        await self._call("POST", "/v1/shutdown", {}, "shutdown")


# ---------------------------------------------------------------------- finding / starting


def running_client(home: Path) -> DaemonClient | None:
    """A client of the daemon serving ``home`` if one answers its health check, else None."""
    paths = ProxyPaths.for_home(home)
    if not paths.sock.exists():
        return None
    client = DaemonClient(paths.sock, timeout=5.0)
    try:
        client.health()
    except ValetkeyError:
        client.close()
        return None
    return client


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of ``path`` (redacted), or ``""``."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return redact_text("\n".join(data.splitlines()[-lines:]))


def daemon_command() -> list[str]:
    """How the daemon is started (``sys.executable``: the same interpreter and packages)."""
    return [sys.executable, "-m", "valetkey", "proxy", "daemon"]


def _child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VALETKEY_HOME"] = str(home)
    if "VALETKEY_CONFIG" not in env:  # pin the config this caller uses (cwd may differ later)
        with contextlib.suppress(Exception):
            from valetkey.paths import find_config

            found = find_config()
            if found is not None:
                env["VALETKEY_CONFIG"] = str(found.resolve())
    return env


def spawn_daemon(home: Path) -> subprocess.Popen[bytes]:
    """Start a detached daemon for ``home`` (its own session; stdio to ``daemon.log``)."""
    paths = ProxyPaths.for_home(home).ensure()
    fd = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.write(fd, f"--- {stamp} starting the proxy daemon (by pid {os.getpid()})\n".encode())
        return subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            daemon_command(),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=_child_env(home),
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)


def ensure_running(home: Path, timeout: float = START_TIMEOUT) -> DaemonClient:
    """A client of the daemon serving ``home``, started first when none answers.

    The check-and-start runs under an exclusive ``flock`` on ``daemon.lock``, so concurrent
    callers in any number of threads and processes start one daemon between them. A lock info
    left by a killed daemon (dead pid, or a socket nobody answers) is cleared first.
    """
    home = Path(home)
    client = running_client(home)
    if client is not None:
        return client
    paths = ProxyPaths.for_home(home).ensure()
    with _flock(paths.lock):
        client = running_client(home)  # someone else started it while we waited
        if client is not None:
            return client
        info = lockfile.read(paths.info)
        if info is not None and lockfile.pid_alive(info.pid) and info.pid != os.getpid():
            # a daemon process that does not answer: give it a moment (it may be starting
            # outside ensure_running), then replace it
            client = _wait_healthy(home, None, min(timeout, 5.0))
            if client is not None:
                return client
        # a stale daemon.json stays: the new daemon reads its port back from it (agents hold
        # proxy URLs with that port) and then overwrites it
        with contextlib.suppress(FileNotFoundError):
            if not lockfile.socket_answers(paths.sock):
                paths.sock.unlink()
        proc = spawn_daemon(home)
        client = _wait_healthy(home, proc, timeout)
        if client is None:
            tail = log_tail(paths.log)
            status = proc.poll()
            how = (
                f"it exited with status {status}"
                if status is not None
                else f"it did not answer within {timeout:.0f} s"
            )
            raise DaemonUnavailable(
                f"could not start the proxy daemon: {how}; the end of {paths.log}:\n{tail}"
            )
        return client


def _wait_healthy(
    home: Path, proc: subprocess.Popen[bytes] | None, timeout: float
) -> DaemonClient | None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        client = running_client(home)
        if client is not None:
            return client
        if proc is not None and proc.poll() is not None:
            return None
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    return None
