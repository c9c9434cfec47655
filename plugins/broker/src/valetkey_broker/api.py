"""The broker's REST API, mounted at ``/api`` by ``valetkey serve``.

Every request carries ``Authorization: Bearer <API token>``; the token (stored as its SHA-256)
names the owner, and the owner always comes from the token, never from the body. Errors have one
stable shape: ``{"error": {"code": "...", "message": "..."}}`` with the matching status. The
OpenAPI document is at ``/api/openapi.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from valetkey_hookspecs import (
    ApiToken,
    Connection,
    ConnectionStatus,
    InvalidInput,
    KernelAPI,
    NotFound,
    Secret,
    Unauthorized,
    ValetkeyError,
    utcnow,
)

from .broker import serving_broker
from .ids import hash_token
from .reconnect import OAUTH_STATE, flows, start_authorization

MAX_BODY = 64 * 1024
TOKEN_CACHE_SECONDS = 5.0
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Handler = Callable[..., Awaitable[Any]]


def connection_json(conn: Connection) -> dict[str, Any]:
    """The public view of a connection (no secret, ever)."""
    return {
        "id": conn.id,
        "connector": conn.connector,
        "status": conn.status.value,
        "label": conn.label,
        "error": conn.error,
        "created_at": conn.created_at.isoformat(),
        "updated_at": conn.updated_at.isoformat(),
    }


def build_api(kernel: KernelAPI) -> Any:
    """The Starlette app for ``/api`` (imported lazily: only ``valetkey serve`` needs it)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, RedirectResponse, Response
    from starlette.routing import Route, Router

    config = kernel.plugin_config("broker")
    broker = serving_broker(kernel)

    def error(status: int, code: str, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="valetkey"'} if status == 401 else None
        return JSONResponse({"error": {"code": code, "message": message}}, status, headers)

    # token hash -> (owner, token id, valid until): a known token skips the store for
    # TOKEN_CACHE_SECONDS (so a revocation takes effect within that time); last use is recorded
    # at most once a minute per token. Unknown tokens are never cached.
    known: dict[str, tuple[str, str, float]] = {}
    touched: dict[str, float] = {}

    async def owner_of(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <API token>'")
        digest = hash_token(value.strip())
        now = time.monotonic()
        cached = known.get(digest)
        if cached is not None and cached[2] > now:
            owner, token_id = cached[0], cached[1]
        else:
            try:
                token = await kernel.store.api_tokens.find(digest)
            except NotFound:
                known.pop(digest, None)
                raise Unauthorized("unknown or revoked API token") from None
            owner, token_id = token.owner, token.id
            if len(known) > 10_000:
                known.clear()
            known[digest] = (owner, token_id, now + TOKEN_CACHE_SECONDS)
        if touched.get(token_id, 0.0) < now - 60:
            touched[token_id] = now
            await kernel.store.api_tokens.touch(token_id, utcnow())
        return owner

    async def body(request: Request, allowed: set[str]) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise InvalidInput(f"request body over {MAX_BODY} bytes")
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidInput("request body must be a JSON object")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidInput(
                f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
            )
        return data

    def text(data: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise InvalidInput(f"field {key!r} is required")
            return None
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"field {key!r} must be a non-empty string")
        return value

    def endpoint(fn: Handler, *, auth: bool = True) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                if auth:
                    owner = await owner_of(request)
                    return await fn(request, owner)  # type: ignore[no-any-return]
                return await fn(request)  # type: ignore[no-any-return]
            except ValetkeyError as exc:
                return error(exc.http_status, exc.code, str(exc))

        return wrapped

    async def list_connectors(_request: Request, _owner: str) -> JSONResponse:
        return JSONResponse(
            [
                {
                    "slug": c.slug,
                    "name": c.name,
                    "auth": c.auth.type.value,
                    "description": c.description,
                    "scopes": list(c.auth.scopes),
                    "device_flow": bool(c.auth.device_authorization_url),
                    "hosts": list(c.injection.hosts) if c.injection else [],
                }
                for c in kernel.connectors.list()
            ]
        )

    async def create_connection(request: Request, owner: str) -> JSONResponse:
        data = await body(request, {"connector", "label"})
        conn = await broker.create_connection(
            owner,
            text(data, "connector", required=True) or "",
            label=text(data, "label") or "",
            actor="api",
        )
        return JSONResponse(connection_json(conn), 201)

    async def list_connections(_request: Request, owner: str) -> JSONResponse:
        return JSONResponse([connection_json(c) for c in await broker.list_connections(owner)])

    async def connection(request: Request, owner: str) -> Response:
        cid = request.path_params["id"]
        if request.method == "GET":
            return JSONResponse(connection_json(await broker.get_connection(owner, cid)))
        if request.method == "DELETE":
            await broker.delete(owner, cid, actor="api")
            return Response(status_code=204)
        data = await body(request, {"label", "status"})
        await broker.get_connection(owner, cid)
        status = text(data, "status")
        if status is not None and status != ConnectionStatus.REVOKED.value:
            raise InvalidInput("status can only be set to 'REVOKED' (reconnect to re-activate)")
        label = (
            text(data, "label") if "label" in data and data["label"] != "" else data.get("label")
        )
        if label is not None:
            await kernel.store.connections.update(cid, owner, label=label)
        if status is not None:
            await broker.revoke(owner, cid, actor="api")
        return JSONResponse(connection_json(await broker.get_connection(owner, cid)))

    async def put_credentials(request: Request, owner: str) -> Response:
        data = await body(
            request, {"api_key", "api_secret", "access_token", "refresh_token", "expires_in"}
        )
        expires_in = data.get("expires_in")
        if expires_in is not None and (not isinstance(expires_in, int | float) or expires_in <= 0):
            raise InvalidInput("field 'expires_in' must be a positive number of seconds")
        secret = Secret(
            api_key=text(data, "api_key"),
            api_secret=text(data, "api_secret"),
            access_token=text(data, "access_token"),
            refresh_token=text(data, "refresh_token"),
            expires_at=utcnow() + timedelta(seconds=expires_in) if expires_in else None,
        )
        if not secret.token:
            raise InvalidInput("send 'api_key' or 'access_token'")
        await broker.store_secret(owner, request.path_params["id"], secret, actor="api")
        return Response(status_code=204)

    async def vend(request: Request, owner: str) -> JSONResponse:
        secret = await broker.vend(owner, request.path_params["id"], actor="api")
        return JSONResponse(
            {
                "token": secret.token,
                "token_type": secret.token_type or "Bearer",
                "api_secret": secret.api_secret,
                "expires_at": secret.expires_at.isoformat() if secret.expires_at else None,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def oauth_start(request: Request, owner: str) -> JSONResponse:
        data = await body(request, {"return_to", "scopes"})
        conn = await broker.get_connection(owner, request.path_params["id"])
        scopes = data.get("scopes") or []
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise InvalidInput("field 'scopes' must be a list of strings")
        started = await start_authorization(
            kernel,
            config,
            conn,
            kernel.connectors.get(conn.connector),
            return_to=text(data, "return_to"),
            scopes=scopes,
        )
        return JSONResponse(
            {"authorization_url": started.url, "expires_at": started.expires_at.isoformat()}
        )

    async def oauth_callback(request: Request) -> Response:
        params = request.query_params
        state = params.get("state")
        if not state:
            raise InvalidInput("the callback has no state")
        try:
            record = await kernel.store.transient.take(OAUTH_STATE, hash_token(state))
        except NotFound:
            raise InvalidInput("unknown, expired or already used login state") from None
        if params.get("error"):
            raise Unauthorized(
                f"the provider refused: {params['error']}"
                + (f": {params['error_description']}" if params.get("error_description") else "")
            )
        code = params.get("code")
        if not code or record.sealed is None or record.owner is None:
            raise InvalidInput("the callback has no code")
        verifier = json.loads(kernel.sealer.open(record.sealed, f"{OAUTH_STATE}:{state}".encode()))[
            "verifier"
        ]
        conn = await broker.get_connection(record.owner, record.data["connection_id"])
        connector = kernel.connectors.get(conn.connector)
        from valetkey_hookspecs import AuthorizationRequest

        auth = AuthorizationRequest(
            url="",
            state=state,
            verifier=verifier,
            redirect_uri=record.data["redirect_uri"],
            scopes=tuple(record.data.get("scopes") or ()),
        )
        secret = await flows(kernel).exchange_code(connector, auth, code)
        await broker.store_secret(record.owner, conn.id, secret, actor="oauth-callback")
        return_to = record.data.get("return_to")
        if return_to and return_to in config.oauth_return_urls:
            return RedirectResponse(return_to, 303)
        return JSONResponse({"connected": conn.id, "connector": conn.connector})

    async def openapi(_request: Request) -> JSONResponse:
        from .openapi import document

        return JSONResponse(document())

    def path(template: str, handlers: dict[str, Handler], auth: bool = True) -> Route:
        """One route per path; the method is dispatched here so a wrong one gets the JSON
        error shape (and the API needs no Starlette app — and middleware stack — of its own)."""
        wrapped = {method: endpoint(fn, auth=auth) for method, fn in handlers.items()}
        allowed = ", ".join(sorted(wrapped))

        async def dispatch(request: Request) -> Response:
            handler = wrapped.get(request.method)
            if handler is None:
                refusal = error(405, "method_not_allowed", f"{request.method} is not allowed here")
                refusal.headers["Allow"] = allowed
                return refusal
            response: Response = await handler(request)
            return response

        return Route(template, dispatch, methods=ALL_METHODS)

    async def not_found(scope: Any, receive: Any, send: Any) -> None:
        where = f"{scope.get('method', '')} {scope.get('root_path', '')}{scope.get('path', '')}"
        await error(404, "not_found", f"no such endpoint: {where}")(scope, receive, send)

    return Router(
        routes=[  # the vend first: routes are matched in order, and it is the hot one
            path("/connections/{id}/token", {"POST": vend}),
            path("/openapi.json", {"GET": openapi}, auth=False),
            path("/connectors", {"GET": list_connectors}),
            path("/connections", {"GET": list_connections, "POST": create_connection}),
            path(
                "/connections/{id}", {"GET": connection, "PATCH": connection, "DELETE": connection}
            ),
            path("/connections/{id}/credentials", {"POST": put_credentials}),
            path("/connections/{id}/oauth/start", {"POST": oauth_start}),
            path("/oauth/callback", {"GET": oauth_callback}, auth=False),
        ],
        default=not_found,
    )


async def create_api_token(kernel: KernelAPI, owner: str, name: str = "") -> tuple[ApiToken, str]:
    """A new API token for ``owner``: the record (hash only) and the token, shown once."""
    import secrets

    from .ids import check_owner, new_id

    token = "vk_" + secrets.token_urlsafe(32)
    record = await kernel.store.api_tokens.create(
        ApiToken(
            id=new_id("tok"), owner=check_owner(owner), token_hash=hash_token(token), name=name
        )
    )
    await kernel.store.audit.append(
        "api_token.create", actor="cli", owner=owner, detail={"token_id": record.id, "name": name}
    )
    return record, token
