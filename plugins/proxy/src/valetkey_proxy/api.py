"""The daemon's management API: a small Starlette app served on ``daemon.sock`` (0600).

Endpoints (JSON in, JSON out; errors are ``{"error": code, "message": text}``):

- ``GET /v1/health`` → ``{pid, proxy_port, run_count, started_at, version, restore_failures}``
- ``POST /v1/runs`` (a :class:`~valetkey_proxy.runs.RunSpec`) → 201 ``{auth_token, proxy_port,
  proxy_host, run_id, env, placeholders, mcp_urls, ca_cert, ca_bundle}``. The run is fully
  prepared (every grant resolved) before its token enters the registry. Sending ``auth_token``
  (64 hex) re-registers with that token (after a daemon restart the agent keeps its proxy URL).
- ``GET /v1/runs`` → ``{"runs": [run info]}``: never a token, never a credential
- ``PATCH /v1/runs/{token}`` ``{container_id}`` → the run's info
- ``DELETE /v1/runs/{token}`` → the removed run's info
- ``DELETE /v1/runs/by-id/{run_id}`` → the same, by run id (for owners that keep no token, such
  as the box manager: whoever can reach this 0600 socket owns every run anyway)
- ``GET|POST|DELETE /v1/routes/{agent}`` ``{services: {name: url}}``: the per-agent service
  route table — named services (a dev server, a database UI) reachable as
  ``http://<name>.<agent>.localhost:<proxy port>/`` (``routing.py``); kept in memory only (an
  agent registers its routes when it starts)
- ``POST /v1/shutdown`` → 202, then the daemon stops gracefully

Errors: unknown token → 404; bad JSON or wrong types → 400; a body over 64 KiB → 413; a run
that cannot be prepared → the error's status (400 bad input, 404 unknown grant, 409/410 a grant
that needs re-auth or was revoked) with its message. Nothing changes on any error.

Compatibility: the daemon may be older or newer than its client. The API is additive-only:
unknown request fields are ignored, response fields are never removed or renamed, and an
endpoint a daemon lacks answers 404 with ``"error": "no_endpoint"`` (or no JSON at all, from
something older), which clients report as "not supported by the running daemon".
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from valetkey_hookspecs import ValetkeyError
from valetkey_hookspecs.redaction import redact_text

from .routing import RouteTable
from .runs import Registry, Run, RunSpec, is_token

log = logging.getLogger("valetkey.proxy.api")

#: the largest request body the management API reads
MAX_BODY = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: a service name is one DNS label: it is the first label of ``<service>.<agent>.localhost``
_SERVICE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class RunGate(Protocol):
    """What the API needs of the gate (``gate.Gate``)."""

    async def prepare(self, spec: RunSpec, token: str | None = None) -> Run: ...

    def run_env(self, run: Run) -> dict[str, str]: ...

    def placeholders(self, run: Run) -> dict[str, str]: ...


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class DaemonState:
    """What the API reads and changes."""

    registry: Registry
    gate: RunGate
    version: str
    started_at: str
    proxy_port: int = 0
    proxy_host: str = "127.0.0.1"
    ca_cert: str = ""
    ca_bundle: str = ""
    pid: int = field(default_factory=os.getpid)
    routes: RouteTable = field(default_factory=RouteTable)
    #: runs that could not be restored at start: ``{"run_id", "error"}``
    restore_failures: list[dict[str, str]] = field(default_factory=list)
    #: called after ``POST /v1/shutdown`` has been answered
    on_shutdown: Callable[[], None] | None = None

    def health(self) -> dict[str, Any]:
        """``GET /v1/health``."""
        return {
            "pid": self.pid,
            "proxy_port": self.proxy_port,
            "run_count": len(self.registry),
            "started_at": self.started_at,
            "version": self.version,
            "restore_failures": list(self.restore_failures),
            "route_agents": len(self.routes),
        }


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _body(request: Request) -> Any:
    """The request's JSON body (64 KiB at most)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "invalid_input", "Content-Length is not a number")
        if int(length) > MAX_BODY:
            raise ApiError(413, "too_large", f"request body is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "too_large", f"request body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "invalid_input", "a JSON object body is required")
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_input", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_input", "body must be a JSON object")
    return data


def _run_of(state: DaemonState, request: Request) -> Run:
    token = request.path_params["token"]
    run = state.registry.lookup(token) if is_token(token) else None
    if run is None:
        raise ApiError(404, "not_found", "no run is registered with this token")
    return run


def _agent(request: Request) -> str:
    agent = request.path_params["agent"]
    if not _NAME.match(agent):
        raise ApiError(400, "invalid_input", "agent: 1-128 letters, digits and . _ -")
    return str(agent)


def build_api(state: DaemonState) -> Starlette:
    """The management API over ``state``."""

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse(state.health())

    async def register(request: Request) -> JSONResponse:
        data = await _body(request)
        try:
            spec = msgspec.convert(data, RunSpec)
        except msgspec.ValidationError as exc:
            raise ApiError(400, "invalid_input", f"invalid run: {exc}") from None
        token = spec.auth_token
        if token is not None and not is_token(token):
            raise ApiError(400, "invalid_input", "auth_token must be 64 lower-case hex characters")
        if spec.run_id and not _NAME.match(spec.run_id):
            raise ApiError(400, "invalid_input", "run_id: 1-128 letters, digits and . _ -")
        if spec.run_id:
            other = state.registry.by_id(spec.run_id)
            if other is not None and other.token != token:
                raise ApiError(409, "conflict", f"run id {spec.run_id!r} is registered already")
        try:
            run = await state.gate.prepare(spec, token)
        except ValetkeyError as exc:
            status = exc.http_status if 400 <= exc.http_status < 500 else 400
            raise ApiError(status, exc.code, redact_text(str(exc))) from None
        # prepare awaited: a concurrent registration may have taken the run id meanwhile
        other = state.registry.by_id(run.run_id)
        if other is not None and other.token != run.token:
            raise ApiError(409, "conflict", f"run id {run.run_id!r} is registered already")
        env = state.gate.run_env(run)
        placeholders = state.gate.placeholders(run)
        host = f"[{state.proxy_host}]" if ":" in state.proxy_host else state.proxy_host
        base = f"http://{host}:{state.proxy_port}"
        mcp_urls = {s.name: f"{base}/mcp/{run.run_id}/{s.name}" for s in run.spec.mcp_servers}
        for name, url in mcp_urls.items():
            env["VALETKEY_MCP_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_URL"] = url
        if run.spec.aws is not None:
            # botocore's container provider: loopback only, token sent as Authorization
            env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"{base}/_aws/credentials"
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = run.token
        state.registry.add(run)
        log.info("run %s registered (%d grant(s))", run.run_id, len(run.spec.grants))
        return JSONResponse(
            {
                "auth_token": run.token,
                "proxy_port": state.proxy_port,
                "proxy_host": state.proxy_host,
                "run_id": run.run_id,
                "env": env,
                "placeholders": placeholders,
                "mcp_urls": mcp_urls,
                "ca_cert": state.ca_cert,
                "ca_bundle": state.ca_bundle,
            },
            status_code=201,
        )

    async def list_runs(_request: Request) -> JSONResponse:
        return JSONResponse({"runs": [run.info() for run in state.registry]})

    async def update_run(request: Request) -> JSONResponse:
        run = _run_of(state, request)
        data = await _body(request)
        if "container_id" not in data:  # a typo must not clear the container silently
            raise ApiError(400, "invalid_input", "container_id is required (a string, or null)")
        container_id = data["container_id"]
        if container_id is not None and (
            not isinstance(container_id, str) or not container_id or len(container_id) > 256
        ):
            raise ApiError(400, "invalid_input", "container_id must be a non-empty string or null")
        state.registry.set_container(run.token, container_id)
        return JSONResponse(run.info())

    async def unregister_run(request: Request) -> JSONResponse:
        run = _run_of(state, request)
        state.registry.remove(run.token)
        log.info("run %s unregistered", run.run_id)
        return JSONResponse(run.info())

    async def unregister_run_id(request: Request) -> JSONResponse:
        run_id = request.path_params["run_id"]
        run = state.registry.by_id(run_id)
        if run is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        state.registry.remove(run.token)
        log.info("run %s unregistered by id", run.run_id)
        return JSONResponse(run.info())

    async def routes(request: Request) -> JSONResponse:
        agent = _agent(request)
        if request.method == "GET":
            services = state.routes.get(agent)
            if services is None:
                raise ApiError(404, "not_found", f"agent {agent!r} has no routes")
            return JSONResponse({"agent": agent, "services": services})
        if request.method == "DELETE":
            if not state.routes.remove(agent):
                raise ApiError(404, "not_found", f"agent {agent!r} has no routes")
            return JSONResponse({"agent": agent, "removed": True})
        data = await _body(request)
        services = data.get("services")
        if not isinstance(services, dict) or not services:
            raise ApiError(400, "invalid_input", "services must be a non-empty object")
        for name, url in services.items():
            if not isinstance(name, str) or not _SERVICE.match(name):
                raise ApiError(400, "invalid_input", f"service name {name!r} is not valid")
            if not isinstance(url, str) or not _is_url(url):
                raise ApiError(400, "invalid_input", f"service {name!r}: url must be http(s)://")
        state.routes.set(agent, services)
        return JSONResponse({"agent": agent, "services": services})

    async def shutdown(_request: Request) -> JSONResponse:
        task = BackgroundTask(state.on_shutdown) if state.on_shutdown else None
        return JSONResponse({"stopping": True}, status_code=202, background=task)

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.code, exc.message)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error(404, "no_endpoint", f"no endpoint {request.url.path}")
        if exc.status_code == 405:
            return _error(405, "method_not_allowed", f"{request.method} {request.url.path}")
        return _error(exc.status_code, "error", str(exc.detail))

    return Starlette(
        routes=[
            Route("/v1/health", health, methods=["GET"]),
            Route("/v1/runs", register, methods=["POST"]),
            Route("/v1/runs", list_runs, methods=["GET"]),
            Route("/v1/runs/{token}", update_run, methods=["PATCH"]),
            Route("/v1/runs/{token}", unregister_run, methods=["DELETE"]),
            Route("/v1/runs/by-id/{run_id}", unregister_run_id, methods=["DELETE"]),
            Route("/v1/routes/{agent}", routes, methods=["GET", "POST", "DELETE"]),
            Route("/v1/shutdown", shutdown, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
    )


def _is_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
