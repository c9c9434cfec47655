"""Web sign-in for people: ``/login`` (the OIDC round trip) and the store-backed session cookie
the auth page and ``/admin`` check.

The flow: ``GET /login/?return_to=/auth/<token>`` validates the return path (a path on this
server: ``/auth/…`` or ``/admin…``; ``//host``, absolute URLs, backslashes and control characters
are refused), stores a login flow — single use, ``oidc.login_ttl`` — under the SHA-256 of a fresh
``state`` (the nonce and PKCE verifier sealed by the kernel's sealer, the return path and the hash
of a browser-binding value), sets that binding value in a ``valetkey_login`` cookie (against login
CSRF: a callback URL opened in another browser is refused) and redirects to the provider.
``GET /login/callback`` takes the flow (``TransientRepo.take``: a replayed state finds nothing),
checks the binding cookie, exchanges the code, validates the ID token
(:class:`~valetkey_boxes.oidc.OidcClient`) and the policy (verified e-mail, hosted domain,
allow-lists or ``admins``), then stores a web session under the SHA-256 of a fresh 32-byte id,
with an expiry (``oidc.session_ttl``), and sets the ``valetkey_session`` cookie (``HttpOnly``,
``SameSite=Lax``, ``Path=/``, ``Secure`` when ``public_url`` is https). ``POST /login/logout``
(with the CSRF token) deletes it. Forms of signed-in pages carry a CSRF token derived from the
session id (HMAC), so it needs no storage and dies with the session.

The ``web-sessions`` service says at start whether activation is open (no provider) and purges
expired flows and sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import secrets
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from valetkey_hookspecs import KernelAPI, NotFound, TransientRecord, ValetkeyError, utcnow
from valetkey_hookspecs.redaction import redact_text, register_secret

from .config import BoxesConfig
from .oidc import Identity, OidcClient, SignInRefused, is_admin, refusal

log = logging.getLogger("valetkey.boxes.web")

LOGIN_FLOW = "boxes-login"
WEB_SESSION = "boxes-web-session"
SESSION_COOKIE = "valetkey_session"
BINDING_COOKIE = "valetkey_login"
PURGE_EVERY = 60.0
MAX_RETURN = 2048
OPEN_NOTICE = "box activation is open: no OIDC provider configured"

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem;
line-height:1.5;color:#1b1b1b;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}
.table{overflow-x:auto}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #ccc;vertical-align:top;
overflow-wrap:anywhere}
button{padding:.4rem 1rem;font:inherit;border-radius:4px;border:1px solid #0a4d8c;
background:#0a4d8c;color:#fff;min-height:2.5rem}button.danger{background:#b00020;
border-color:#b00020}button:focus,input:focus,select:focus,a:focus{outline:3px solid #f5b400}
form.inline{display:inline}label{font-weight:600;margin-right:.5rem}
select,input[type=text]{font:inherit;padding:.35rem;min-height:2.5rem;max-width:100%}
.error{border-left:4px solid #b00020;padding:.5rem 1rem;background:#fdecee}
.ok{border-left:4px solid #1b7a3a;padding:.5rem 1rem;background:#e8f5ec}
code,.secret{font-family:ui-monospace,monospace;overflow-wrap:anywhere}
.secret{display:block;padding:.5rem;background:#f4f4f4;border:1px solid #ccc;user-select:all}
header{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:center;gap:.5rem}
@media (max-width:40rem){th.opt,td.opt{display:none}}
"""


def esc(value: Any) -> str:
    """HTML-escape anything (quotes too): every value on a page goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def render_page(
    title: str, body: str, status: int = 200, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """A plain, self-contained page (inline CSS, no scripts, no external assets)."""
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="same-origin">'
        f"<title>{esc(title)} · valetkey</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )
    base = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "X-Content-Type-Options": "nosniff",
        # same-origin: with no-referrer, browsers send "Origin: null" on the page's own forms
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }
    base.update(headers or {})
    return HTMLResponse(doc, status_code=status, headers=base)


def message_page(title: str, message: str, status: int, extra: str = "") -> HTMLResponse:
    """A page with one heading and one announced message."""
    role = "status" if status < 400 else "alert"
    cls = "ok" if status < 400 else "error"
    return render_page(
        title,
        f'<h1>{esc(title)}</h1><p class="{cls}" role="{role}">{esc(message)}</p>{extra}',
        status,
    )


def safe_return_path(value: str | None) -> str | None:
    """``value`` if it is a path on this server the sign-in may return to (``/auth/…`` or
    ``/admin…``), else None. Refused: ``//host``, ``/\\host``, absolute URLs, backslashes,
    control characters, ``..`` segments, over-long values."""
    if not value or len(value) > MAX_RETURN:
        return None
    if not value.startswith("/") or value.startswith("//"):
        return None
    if "\\" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    if ".." in parts.path.split("/") or "%" in parts.path:
        return None
    path = parts.path
    if not (path.startswith("/auth/") or path == "/admin" or path.startswith("/admin/")):
        return None
    return value


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class WebSession:
    """A signed-in person: the session's key (hash of the cookie) and who they are."""

    key: str
    csrf: str
    identity: Identity


class WebAuth:
    """Sign-in state of one server: the provider, login flows and web sessions in the store."""

    def __init__(self, kernel: KernelAPI, config: BoxesConfig) -> None:
        self.kernel = kernel
        self.config = config
        self.oidc = OidcClient(config.oidc)
        base = config.public_url.rstrip("/")
        self.redirect_uri = f"{base}/login/callback"
        self.secure = config.public_url.startswith("https://")

    # ---------------------------------------------------------------- policy

    def refusal(self, identity: Identity) -> str | None:
        """Why ``identity`` may not activate boxes (None: it may)."""
        return refusal(self.config.oidc, identity)

    def is_admin(self, identity: Identity) -> bool:
        """May ``identity`` use ``/admin``?"""
        return is_admin(self.config, identity)

    # ---------------------------------------------------------------- cookies

    def cookie(self, name: str, value: str, path: str, max_age: int) -> str:
        """A ``Set-Cookie`` value: HttpOnly, SameSite=Lax, Secure over https."""
        flags = f"; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax"
        return f"{name}={value}{flags}" + ("; Secure" if self.secure else "")

    # ---------------------------------------------------------------- the flow

    async def start(self, return_to: str) -> tuple[str, str]:
        """Store a login flow; return the provider URL and the browser-binding value."""
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        binding = secrets.token_urlsafe(32)
        key = _hash(state)
        url = await self.oidc.authorization_url(self.redirect_uri, state, nonce, verifier)
        sealed = self.kernel.sealer.seal(
            json.dumps({"verifier": verifier, "nonce": nonce}).encode(),
            f"{LOGIN_FLOW}:{key}".encode(),
        )
        await self.kernel.store.transient.put(
            TransientRecord(
                kind=LOGIN_FLOW,
                key=key,
                expires_at=utcnow() + timedelta(seconds=self.config.oidc.login_ttl),
                data={"return_to": return_to, "binding": _hash(binding)},
                sealed=sealed,
            )
        )
        return url, binding

    async def finish(self, state: str, code: str, error: str, binding: str) -> tuple[Identity, str]:
        """Complete a login flow (single use); ``SignInRefused`` says why not."""
        if not state:
            raise SignInRefused("the sign-in answer has no state", 400)
        key = _hash(state)
        try:
            flow = await self.kernel.store.transient.take(LOGIN_FLOW, key)
        except NotFound:
            raise SignInRefused(
                "this sign-in is unknown, expired or was already used: start again", 400
            ) from None
        expected = str(flow.data.get("binding") or "")
        if not binding or not hmac.compare_digest(_hash(binding), expected):
            raise SignInRefused(
                "this sign-in was started in another browser: start again here", 400
            )
        if error:
            safe = error if error.replace("_", "").isalpha() and len(error) < 64 else "error"
            raise SignInRefused(f"the provider did not sign you in ({safe})", 401)
        if not code or flow.sealed is None:
            raise SignInRefused("the sign-in answer has no code", 400)
        secret = json.loads(self.kernel.sealer.open(flow.sealed, f"{LOGIN_FLOW}:{key}".encode()))
        register_secret(code)
        identity = await self.oidc.identity(
            code, str(secret["verifier"]), self.redirect_uri, str(secret["nonce"])
        )
        reason = self.refusal(identity)
        if reason is not None and not self.is_admin(identity):
            raise SignInRefused(f"{identity.email or 'this account'}: {reason}", 403)
        return identity, str(flow.data.get("return_to") or "/admin/")

    # ---------------------------------------------------------------- sessions

    async def create_session(self, identity: Identity) -> str:
        """Store a web session for ``identity``; return the cookie value (shown to no one)."""
        session_id = secrets.token_urlsafe(32)
        register_secret(session_id)
        await self.kernel.store.transient.put(
            TransientRecord(
                kind=WEB_SESSION,
                key=_hash(session_id),
                expires_at=utcnow() + timedelta(seconds=self.config.oidc.session_ttl),
                owner=identity.email,
                data=identity.as_data(),
            )
        )
        await self.kernel.store.audit.append(
            "boxes.sign_in", actor=f"web:{identity.email}", detail={"sub": identity.sub}
        )
        return session_id

    async def current(self, request: Request) -> WebSession | None:
        """The request's live session, or None."""
        session_id = request.cookies.get(SESSION_COOKIE) or ""
        if not session_id or len(session_id) > 128:
            return None
        key = _hash(session_id)
        try:
            record = await self.kernel.store.transient.get(WEB_SESSION, key)
        except NotFound:
            return None
        identity = Identity.from_data(record.data)
        if identity.issuer != self.config.oidc.issuer:
            return None  # the provider changed since the sign-in
        return WebSession(key=key, csrf=csrf_token(session_id), identity=identity)

    async def end(self, session: WebSession) -> None:
        """Sign out."""
        await self.kernel.store.transient.delete(WEB_SESSION, session.key)


def csrf_token(session_id: str) -> str:
    """The CSRF token of a session: HMAC of a fixed label under the session id."""
    return hmac.new(session_id.encode(), b"valetkey-boxes-csrf", hashlib.sha256).hexdigest()


def csrf_ok(session: WebSession, value: str) -> bool:
    """Does a submitted CSRF token belong to this session?"""
    return bool(value) and hmac.compare_digest(session.csrf, value)


def origin_ok(request: Request, config: BoxesConfig) -> bool:
    """A POST's ``Origin`` (when the browser sends one) is this server; ``null`` (a sandboxed
    frame, a ``data:`` page) is refused."""
    origin = request.headers.get("origin")
    if not origin:
        return True
    expected = request.url.scheme + "://" + (request.headers.get("host") or "")
    return origin in (expected, config.public_url.rstrip("/"))


_auths: weakref.WeakKeyDictionary[Any, WebAuth | None] = weakref.WeakKeyDictionary()


def web_auth_for(kernel: KernelAPI) -> WebAuth | None:
    """The kernel's sign-in state; None when no provider is configured (activation open)."""
    if kernel in _auths:
        return _auths[kernel]
    from .manager import manager_for

    config = manager_for(kernel).config
    auth = WebAuth(kernel, config) if config.oidc.enabled else None
    _auths[kernel] = auth
    return auth


def login_location(return_to: str) -> str:
    """The sign-in URL that comes back to ``return_to``."""
    return "/login/?return_to=" + quote(return_to, safe="/")


async def activation_gate(kernel: KernelAPI, request: Request) -> Response | None:
    """For the auth page: None when the request may go on (no provider, or a signed-in person
    the allow-lists accept); else a redirect to sign in (GET), 401 (other methods) or 403."""
    auth = web_auth_for(kernel)
    if auth is None:
        return None
    session = await auth.current(request)
    if session is None:
        back = safe_return_path(request.url.path)
        if request.method == "GET" and back is not None:
            return RedirectResponse(
                login_location(back), 303, headers={"Cache-Control": "no-store"}
            )
        return message_page(
            "Sign in first", "Sign in before activating a box, then open the link again.", 401
        )
    reason = auth.refusal(session.identity)
    if reason is not None:
        return message_page(
            "Not allowed", f"{session.identity.email}: {reason}.", 403, _signout_form(session)
        )
    return None


def _signout_form(session: WebSession) -> str:
    return (
        '<form method="post" action="/login/logout">'
        f'<input type="hidden" name="csrf" value="{esc(session.csrf)}">'
        '<button type="submit">Sign out</button></form>'
    )


def signout_form(session: WebSession) -> str:
    """A sign-out button (a POST with the session's CSRF token)."""
    return _signout_form(session)


def build_login_app(kernel: KernelAPI) -> Starlette:
    """The ASGI app mounted at ``/login`` by ``valetkey serve``."""

    def require() -> WebAuth | Response:
        auth = web_auth_for(kernel)
        if auth is None:
            return message_page(
                "No sign-in", "No sign-in provider is configured on this server.", 404
            )
        return auth

    async def start(request: Request) -> Response:
        auth = require()
        if isinstance(auth, Response):
            return auth
        raw = request.query_params.get("return_to") or "/admin/"
        back = safe_return_path(raw)
        if back is None:
            return message_page("Refused", "That return address is not a page of this server.", 400)
        try:
            url, binding = await auth.start(back)
        except SignInRefused as exc:
            return message_page("Sign-in unavailable", str(exc), exc.status)
        headers = {
            "Cache-Control": "no-store",
            "Set-Cookie": auth.cookie(
                BINDING_COOKIE, binding, "/login/", int(auth.config.oidc.login_ttl)
            ),
        }
        return RedirectResponse(url, 303, headers=headers)

    async def callback(request: Request) -> Response:
        auth = require()
        if isinstance(auth, Response):
            return auth
        params = request.query_params
        clear = auth.cookie(BINDING_COOKIE, "", "/login/", 0)
        try:
            identity, back = await auth.finish(
                params.get("state") or "",
                params.get("code") or "",
                params.get("error") or "",
                request.cookies.get(BINDING_COOKIE) or "",
            )
            session_id = await auth.create_session(identity)
        except SignInRefused as exc:
            log.info("sign-in refused: %s", redact_text(str(exc)))
            page = message_page("Sign-in refused", str(exc), exc.status)
            page.headers["Set-Cookie"] = clear
            return page
        except ValetkeyError as exc:
            log.warning("sign-in failed: %s", redact_text(str(exc)))
            return message_page("Sign-in failed", "The sign-in could not be completed.", 502)
        response = RedirectResponse(back, 303, headers={"Cache-Control": "no-store"})
        response.headers.append("Set-Cookie", clear)
        response.headers.append(
            "Set-Cookie",
            auth.cookie(SESSION_COOKIE, session_id, "/", int(auth.config.oidc.session_ttl)),
        )
        log.info("signed in: %s", identity.email)
        return response

    async def logout(request: Request) -> Response:
        auth = require()
        if isinstance(auth, Response):
            return auth
        session = await auth.current(request)
        if session is None:
            return message_page("Signed out", "You are not signed in.", 200)
        form = await request.form()
        if not origin_ok(request, auth.config) or not csrf_ok(session, str(form.get("csrf") or "")):
            return message_page("Refused", "This form must be sent from its own page.", 403)
        await auth.end(session)
        page = message_page("Signed out", "You are signed out.", 200)
        page.headers["Set-Cookie"] = auth.cookie(SESSION_COOKIE, "", "/", 0)
        return page

    return Starlette(
        routes=[
            Route("/", start, methods=["GET"]),
            Route("/callback", callback, methods=["GET"]),
            Route("/logout", logout, methods=["POST"]),
        ]
    )


async def web_sessions_service(kernel: KernelAPI) -> None:
    """Say at start whether activation is open; purge expired flows and sessions until
    cancelled."""
    auth = web_auth_for(kernel)
    if auth is None:
        log.warning(OPEN_NOTICE)
    else:
        log.info(
            "box activation requires sign-in with %s (%d allowed domain(s), %d e-mail(s))%s",
            auth.config.oidc.issuer,
            len(auth.config.oidc.allowed_domains),
            len(auth.config.oidc.allowed_emails),
            "; admin UI at /admin" if auth.config.admins else "",
        )
    try:
        while True:
            try:
                gone = await kernel.store.transient.purge_expired(utcnow())
                if gone:
                    log.info("purged %d expired sign-in record(s)", gone)
            except ValetkeyError as exc:
                log.warning("purging sign-in records: %s", redact_text(str(exc)))
            await asyncio.sleep(PURGE_EVERY)
    finally:
        if auth is not None:
            await auth.oidc.aclose()
