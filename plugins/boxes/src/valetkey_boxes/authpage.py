"""The auth page: ``GET /auth/{token}`` shows the box and a form for the code; ``POST`` sends the
code to the box's login process (stdin) and shows ready, with the session URL, or the error.

The token in the URL is the only capability (64 hex, stored hashed). The form is protected by a
double-submit CSRF token (a random value in a ``SameSite=Strict``, ``HttpOnly`` cookie scoped to
the page's own path, repeated in a hidden field), an ``Origin`` check (``null`` refused) and
``X-Frame-Options: DENY``. The page is plain HTML with inline CSS, no scripts and no external
assets; it works without JavaScript and with a screen
reader (labels, headings, ``role="alert"`` / ``role="status"`` messages). The code never appears
in a page, a log line or an error.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from valetkey_hookspecs import BoxSession, BoxStatus, KernelAPI, ValetkeyError
from valetkey_hookspecs.redaction import redact_text

from .manager import manager_for
from .websession import activation_gate

log = logging.getLogger("valetkey.boxes.auth")

CSRF_COOKIE = "valetkey_csrf"
MAX_FORM = 16 * 1024

_CSS = """
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;
line-height:1.5;color:#1b1b1b;background:#fff}
h1{font-size:1.4rem}dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dt{font-weight:600}label{display:block;font-weight:600;margin:1rem 0 .25rem}
input[type=text]{width:100%;padding:.5rem;font:inherit;border:1px solid #555;border-radius:4px}
button{margin-top:1rem;padding:.5rem 1.25rem;font:inherit;border-radius:4px;border:1px solid
#0a4d8c;background:#0a4d8c;color:#fff}button:focus,input:focus,a:focus{outline:3px solid #f5b400}
.error{border-left:4px solid #b00020;padding:.5rem 1rem;background:#fdecee}
.ready{border-left:4px solid #1b7a3a;padding:.5rem 1rem;background:#e8f5ec}
"""


def _page(
    title: str, body: str, status: int = 200, headers: dict[str, str] | None = None
) -> HTMLResponse:
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="same-origin">'
        f"<title>{html.escape(title)} · valetkey</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )
    base = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
        "form-action 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # no-referrer makes browsers send Origin: null
        "X-Frame-Options": "DENY",
    }
    base.update(headers or {})
    return HTMLResponse(doc, status_code=status, headers=base)


def _web_link(url: str | None) -> tuple[str, str] | None:
    """(escaped URL, host) for an http(s) link the box printed; None for anything else (the box
    is untrusted: no ``javascript:`` or ``data:`` links on this page)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return html.escape(url, quote=True), html.escape(parts.hostname)


def _box_facts(session: BoxSession, login_url: str | None) -> str:
    rows = [("Box", session.box_id), ("Image", session.image)]
    if session.description:
        rows.append(("About", session.description))
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    link = _web_link(login_url)
    if link is not None:
        safe, host = link
        text = (
            f"<p>The box asks you to sign in at <strong>{host}</strong>. Continue only if that "
            "is the provider you expect.</p>"
            f'<p>1. Open <a href="{safe}" rel="noopener noreferrer" target="_blank">{safe}</a> '
            "and sign in. 2. Paste the code it gives you below.</p>"
        )
    else:
        text = "<p>The box has not printed a sign-in link yet; reload this page in a moment.</p>"
    return f"<dl>{facts}</dl>{text}"


def _form(csrf: str, error: str | None = None) -> str:
    alert = (
        f'<p class="error" role="alert" id="code-error">{html.escape(error)}</p>' if error else ""
    )
    described = ' aria-describedby="code-error"' if error else ""
    return (
        f'{alert}<form method="post" autocomplete="off">'
        f'<input type="hidden" name="csrf" value="{csrf}">'
        '<label for="code">Code from the sign-in page</label>'
        f'<input type="text" id="code" name="code" required spellcheck="false"{described}>'
        '<button type="submit">Send to the box</button></form>'
    )


def build_auth_app(kernel: KernelAPI) -> Starlette:
    """The ASGI app mounted at ``/auth`` by ``valetkey serve``."""

    async def page(request: Request) -> Response:
        # with [plugin.boxes.oidc]: a signed-in person the allow-lists accept, else sign in
        gate = await activation_gate(kernel, request)
        if gate is not None:
            return gate
        token = request.path_params["token"]
        manager = manager_for(kernel)
        try:
            session = await manager.session_for_token(token)
        except ValetkeyError as exc:
            return _page(
                "Link not valid",
                f'<h1>Link not valid</h1><p role="alert">{html.escape(str(exc))}</p>',
                404,
            )
        if request.method == "POST":
            return await _submit(request, token, session)
        return await _show(manager, token, session)

    async def _show(
        manager: Any,
        token: str,
        session: BoxSession,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        if session.status is BoxStatus.READY:
            return _ready(session)
        csrf = secrets.token_urlsafe(32)
        try:
            login_url = await manager.login_url(session)
        except ValetkeyError as exc:
            log.warning("auth page for box %s: %s", session.box_id, redact_text(str(exc)))
            body = (
                f"<h1>Box {html.escape(session.box_id)} cannot be reached</h1>"
                '<p role="alert">The box engine cannot be reached right now. Try again in a '
                "moment; nothing was sent.</p>"
            )
            return _page("Box unreachable", body, 503)
        note = ""
        if session.status is BoxStatus.ERROR and error is None and session.error:
            note = (
                f'<p class="error" role="alert">The last attempt failed: '
                f"{html.escape(session.error)}. You can try again.</p>"
            )
        body = (
            f"<h1>Sign the box {html.escape(session.box_id)} in</h1>"
            + _box_facts(session, login_url)
            + note
            + _form(csrf, error)
        )
        # scoped to this page: another box's page open in the same browser keeps its own
        cookie = f"{CSRF_COOKIE}={csrf}; Path=/auth/{token}; HttpOnly; SameSite=Strict" + (
            "; Secure" if manager.config.public_url.startswith("https://") else ""
        )
        return _page(f"Sign {session.box_id} in", body, status, {"Set-Cookie": cookie})

    async def _submit(request: Request, token: str, session: BoxSession) -> Response:
        manager = manager_for(kernel)
        origin = request.headers.get("origin")
        if origin:  # "null" (a sandboxed frame, a data: page) is refused too
            expected = request.url.scheme + "://" + (request.headers.get("host") or "")
            public = manager.config.public_url.rstrip("/")
            if origin not in (expected, public):
                return _page(
                    "Refused",
                    '<h1>Refused</h1><p role="alert">This form must be sent from its own page.</p>',
                    403,
                )
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_FORM:
            return _page(
                "Too large", '<h1>Too large</h1><p role="alert">The form was too large.</p>', 413
            )
        form = await request.form()
        field = str(form.get("csrf") or "")
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        if not field or not cookie or not hmac.compare_digest(field, cookie):
            return await _show(
                manager,
                token,
                session,
                "The form expired; it was reloaded. Paste the code again.",
                403,
            )
        code = str(form.get("code") or "")
        try:
            updated = await manager.submit_code(token, code)
        except ValetkeyError as exc:
            message = (
                redact_text(str(exc)).replace(code.strip(), "[REDACTED]")
                if code.strip()
                else redact_text(str(exc))
            )
            return await _show(
                manager,
                token,
                session,
                message,
                exc.http_status if 400 <= exc.http_status < 500 else 502,
            )
        if updated.status is BoxStatus.READY:
            return _ready(updated)
        return await _show(manager, token, updated, updated.error or "the login failed", 422)

    def _ready(session: BoxSession) -> Response:
        link = ""
        if (web := _web_link(session.session_url)) is not None:
            safe = web[0]
            link = f'<p>Session: <a href="{safe}" rel="noopener noreferrer">{safe}</a></p>'
        body = (
            f"<h1>Box {html.escape(session.box_id)} is ready</h1>"
            f'<p class="ready" role="status">Signed in. You can close this page.</p>{link}'
        )
        return _page(f"{session.box_id} is ready", body)

    return Starlette(routes=[Route("/{token}", page, methods=["GET", "POST"])])
