"""The admin UI at ``/admin``: enabled when ``[plugin.boxes] admins`` lists e-mails (which needs
``[plugin.boxes.oidc]``); people sign in through ``/login`` with the same provider.

``GET /admin/`` lists the boxes (``BoxManager.list_boxes``: every spoke once clustering tags
them), the spokes with their health (this server's own runtime, then the enrolled spokes of the
store: connected as the hub sees it when this server is a hub, else last seen) and the join
tokens (valid, used, expired). Actions are POST forms:
create a join token (shown once, on the answer page only), revoke a join token, delete a spoke,
destroy a box. Every action needs a signed-in admin and the session's CSRF token (and an
``Origin``, when sent, of this server): no session → 401, not an admin or a bad CSRF token → 403.
A GET without a session redirects to the sign-in.

Plain server-rendered HTML (inline CSS, no scripts, no external assets; a viewport meta and a
narrow-screen layout for phones). Every value shown is escaped: box ids, descriptions, images,
errors and spoke names are untrusted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from valetkey_hookspecs import JoinToken, KernelAPI, Spoke, ValetkeyError, utcnow
from valetkey_hookspecs.redaction import redact_text

from .jointokens import create_join_token, join_token_state, parse_ttl, revoke_join_token
from .manager import manager_for
from .websession import (
    WebAuth,
    WebSession,
    csrf_ok,
    esc,
    login_location,
    message_page,
    origin_ok,
    render_page,
    signout_form,
    web_auth_for,
)

log = logging.getLogger("valetkey.boxes.admin")

MAX_FORM = 16 * 1024
#: a spoke seen this recently counts as healthy when the hub says nothing more
HEALTHY_WITHIN = timedelta(seconds=90)
TTL_CHOICES = (("15m", "15 minutes"), ("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days"))
DONE = {
    "token-revoked": "The join token was revoked.",
    "spoke-deleted": "The spoke was deleted.",
    "box-destroyed": "The box was destroyed.",
}


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else "—"


def spoke_health(spoke: Spoke, now: datetime | None = None, live: bool | None = None) -> str:
    """``connected``, ``disconnected`` or ``never seen``: ``live`` (the hub's own answer, when
    this server is a hub), else a ``connected`` flag in the spoke's data, else how recently the
    spoke was seen."""
    if live is not None:
        return "connected" if live else "disconnected"
    connected = spoke.data.get("connected")
    if isinstance(connected, bool):
        return "connected" if connected else "disconnected"
    if spoke.last_seen_at is None:
        return "never seen"
    recent = spoke.last_seen_at >= (now or utcnow()) - HEALTHY_WITHIN
    return "connected" if recent else "disconnected"


def _button(action: str, csrf: str, label: str, danger: bool = False) -> str:
    cls = ' class="danger"' if danger else ""
    return (
        f'<form class="inline" method="post" action="{esc(action)}">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<button type="submit"{cls}>{esc(label)}</button></form>'
    )


def _table(headers: list[tuple[str, bool]], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p>{esc(empty)}</p>"
    head = "".join(
        f'<th scope="col"{" class=opt" if opt else ""}>{esc(h)}</th>' for h, opt in headers
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=opt' if headers[i][1] else ''}>{cell}</td>" for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table">{table}</div>'


def build_admin_app(kernel: KernelAPI) -> Starlette:
    """The ASGI app mounted at ``/admin`` by ``valetkey serve``."""

    async def guard(request: Request) -> tuple[WebAuth, WebSession] | Response:
        auth = web_auth_for(kernel)
        if auth is None or not auth.config.admins:
            return message_page("Not enabled", "The admin UI is not enabled on this server.", 404)
        session = await auth.current(request)
        if session is None:
            if request.method == "GET":
                return RedirectResponse(
                    login_location("/admin/"), 303, headers={"Cache-Control": "no-store"}
                )
            return message_page("Sign in first", "Sign in as an admin first.", 401)
        if not auth.is_admin(session.identity):
            return message_page(
                "Not an admin",
                f"{session.identity.email} is not an admin of this server.",
                403,
                signout_form(session),
            )
        if request.method == "POST":
            if int(request.headers.get("content-length") or 0) > MAX_FORM:
                return message_page("Too large", "The form was too large.", 413)
            form = await request.form()
            if not origin_ok(request, auth.config) or not csrf_ok(
                session, str(form.get("csrf") or "")
            ):
                return message_page(
                    "Refused", "This form expired or came from another page: reload it.", 403
                )
        return auth, session

    async def audit(session: WebSession, action: str, detail: dict[str, Any]) -> None:
        await kernel.store.audit.append(
            action, actor=f"admin:{session.identity.email}", detail=detail
        )

    async def overview(
        session: WebSession, error: str | None = None, status: int = 200, notice: str = ""
    ) -> Response:
        manager = manager_for(kernel)
        now = utcnow()
        csrf = session.csrf
        problems: list[str] = []
        try:
            boxes = await manager.list_boxes()
        except ValetkeyError as exc:
            boxes = []
            problems.append(f"boxes could not be listed: {redact_text(str(exc))}")
        spokes: list[Spoke] = await kernel.store.spokes.list()
        live: Callable[[str], bool] | None = None
        if manager.config.hub.enabled:  # this server is a hub: it knows who is connected
            from .hub import hub_for

            live = hub_for(kernel).connected
        tokens: list[JoinToken] = await kernel.store.spokes.list_join_tokens()

        box_rows = []
        for box in boxes:
            box_id = str(box.get("box_id") or "")
            box_rows.append(
                [
                    f"<code>{esc(box_id)}</code>",
                    esc(box.get("status")),
                    esc(box.get("state")),
                    esc(box.get("spoke") or "local"),
                    esc(box.get("image")),
                    esc(box.get("description")),
                    _button(
                        f"/admin/boxes/{quote(box_id, safe='')}/destroy",
                        csrf,
                        f"Destroy {box_id}",
                        danger=True,
                    ),
                ]
            )
        spoke_rows = [["<code>local</code>", "this server", "connected", "—", "—", ""]]
        for spoke in spokes:
            spoke_rows.append(
                [
                    f"<code>{esc(spoke.name)}</code>",
                    f"<code>{esc(spoke.id)}</code>",
                    esc(spoke_health(spoke, now, live(spoke.name) if live else None)),
                    esc(_when(spoke.created_at)),
                    esc(_when(spoke.last_seen_at)),
                    _button(
                        f"/admin/spokes/{quote(spoke.id, safe='')}/delete",
                        csrf,
                        f"Delete {spoke.name}",
                        danger=True,
                    ),
                ]
            )
        token_rows = []
        for token in reversed(tokens):
            state = join_token_state(token, now)
            token_rows.append(
                [
                    f"<code>{esc(token.id)}</code>",
                    esc(state),
                    esc(_when(token.created_at)),
                    esc(_when(token.expires_at)),
                    esc(token.used_by or "—"),
                    _button(
                        f"/admin/tokens/{quote(token.id, safe='')}/revoke",
                        csrf,
                        "Revoke" if state == "valid" else "Remove",
                    ),
                ]
            )
        alerts = "".join(f'<p class="error" role="alert">{esc(p)}</p>' for p in problems)
        if error:
            alerts = f'<p class="error" role="alert">{esc(error)}</p>' + alerts
        if notice:
            alerts = f'<p class="ok" role="status">{esc(notice)}</p>' + alerts
        options = "".join(
            f'<option value="{esc(v)}"{" selected" if v == "1h" else ""}>{esc(label)}</option>'
            for v, label in TTL_CHOICES
        )
        body = (
            "<header><h1>valetkey fleet</h1><p>Signed in as "
            f"<strong>{esc(session.identity.email)}</strong> {signout_form(session)}</p></header>"
            + alerts
            + f'<h2 id="boxes">Boxes ({len(boxes)})</h2>'
            + _table(
                [
                    ("Box", False),
                    ("Auth", False),
                    ("State", False),
                    ("Spoke", False),
                    ("Image", True),
                    ("About", True),
                    ("", False),
                ],
                box_rows,
                "No boxes.",
            )
            + f'<h2 id="spokes">Spokes ({len(spokes) + 1})</h2>'
            + _table(
                [
                    ("Spoke", False),
                    ("Id", True),
                    ("Health", False),
                    ("Enrolled", True),
                    ("Last seen", True),
                    ("", False),
                ],
                spoke_rows,
                "",
            )
            + f'<h2 id="tokens">Join tokens ({len(tokens)})</h2>'
            + '<form method="post" action="/admin/tokens">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<label for="ttl">Valid for</label><select id="ttl" name="ttl">{options}</select> '
            '<button type="submit">Create join token</button></form>'
            + _table(
                [
                    ("Token", False),
                    ("State", False),
                    ("Created", True),
                    ("Expires", True),
                    ("Used by", True),
                    ("", False),
                ],
                token_rows,
                "No join tokens.",
            )
        )
        return render_page("Fleet", body, status)

    async def home(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        _, session = guarded
        done = DONE.get(request.query_params.get("done") or "", "")
        return await overview(session, notice=done)

    async def failed(session: WebSession, exc: ValetkeyError) -> Response:
        status = exc.http_status if 400 <= exc.http_status < 500 else 502
        return await overview(session, redact_text(str(exc)), status)

    async def create_token(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        auth, session = guarded
        form = await request.form()
        try:
            ttl = parse_ttl(str(form.get("ttl") or "1h"))
            minted = await create_join_token(kernel.store, ttl)
        except ValetkeyError as exc:
            return await failed(session, exc)
        await audit(session, "spoke.join_token.create", {"token_id": minted.record.id})
        hub = auth.config.public_url.rstrip("/")
        # the token is pasted at the prompt (or piped on stdin): never on a command line
        command = f"valetkey spoke run --hub {hub} --name SPOKE-NAME --token-stdin"
        body = (
            '<h1>Join token created</h1><p class="ok" role="status">Copy it now: it is shown '
            "only once and works once.</p>"
            f'<p><label for="token">Join token <code>{esc(minted.record.id)}</code>, valid until '
            f"{esc(_when(minted.record.expires_at))}</label></p>"
            f'<code class="secret" id="token">{esc(minted.token)}</code>'
            "<p>On the spoke host, run this and paste the join token when it asks:</p>"
            f'<code class="secret" id="command">{esc(command)}</code>'
            '<p><a href="/admin/">Back to the fleet</a></p>'
        )
        return render_page("Join token created", body, 201)

    async def revoke_token(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        _, session = guarded
        token_id = request.path_params["token_id"]
        try:
            await revoke_join_token(kernel.store, token_id)
        except ValetkeyError as exc:
            return await failed(session, exc)
        await audit(session, "spoke.join_token.revoke", {"token_id": token_id})
        return RedirectResponse("/admin/?done=token-revoked", 303)

    async def delete_spoke(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        _, session = guarded
        spoke_id = request.path_params["spoke_id"]
        try:
            await kernel.store.spokes.delete(spoke_id)
        except ValetkeyError as exc:
            return await failed(session, exc)
        await audit(session, "spoke.delete", {"spoke_id": spoke_id})
        return RedirectResponse("/admin/?done=spoke-deleted", 303)

    async def destroy_box(request: Request) -> Response:
        guarded = await guard(request)
        if isinstance(guarded, Response):
            return guarded
        _, session = guarded
        box_id = request.path_params["box_id"]
        try:
            await manager_for(kernel).destroy(box_id)
        except ValetkeyError as exc:
            return await failed(session, exc)
        await audit(session, "box.admin_destroy", {"box_id": box_id})
        return RedirectResponse("/admin/?done=box-destroyed", 303)

    return Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/tokens", create_token, methods=["POST"]),
            Route("/tokens/{token_id}/revoke", revoke_token, methods=["POST"]),
            Route("/spokes/{spoke_id}/delete", delete_spoke, methods=["POST"]),
            Route("/boxes/{box_id}/destroy", destroy_box, methods=["POST"]),
        ]
    )
