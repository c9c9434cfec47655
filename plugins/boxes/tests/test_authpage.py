"""The auth page over real sockets (uvicorn on 127.0.0.1 in the test's loop) against a real
dockerd: every refusal says why and sends nothing to the box."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from valetkey_boxes.authpage import _web_link, build_auth_app
from valetkey_boxes.manager import BoxManager, manager_for
from valetkey_hookspecs import BoxStatus, RuntimeUnavailable

pytestmark = pytest.mark.anyio


@pytest.fixture
async def site(kernel):
    app = Starlette(routes=[Mount("/auth", app=build_auth_app(kernel))])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        yield client
    server.should_exit = True
    await task


async def page_and_form(client, token):
    for _ in range(100):  # until the box printed its sign-in link
        page = await client.get(f"/auth/{token}")
        if "login.example.test" in page.text:
            break
        await asyncio.sleep(0.1)
    field = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return page, field


async def pending(kernel, box_id):
    created = await BoxManager(kernel).create(box_id)
    return created.token


async def test_the_page_shows_the_provider_and_protects_itself(kernel, site):
    token = await pending(kernel, "page1")
    page, _ = await page_and_form(site, token)
    assert page.status_code == 200
    assert "<strong>login.example.test</strong>" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    cookie = page.headers["set-cookie"]
    assert f"Path=/auth/{token}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    await manager_for(kernel).destroy("page1")


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("foreign-origin", 403, "must be sent from its own page"),
        ("null-origin", 403, "must be sent from its own page"),
        ("no-cookie", 403, "The form expired"),
        ("too-large", 413, "too large"),
        ("two-lines", 400, "one line"),
        ("blank", 400, "it was empty"),
    ],
)
async def test_refused_submissions_send_nothing(kernel, site, case, status, message):
    token = await pending(kernel, "refuse")
    _, field = await page_and_form(site, token)
    data = {"csrf": field, "code": "the-code-123"}
    headers = {}
    if case == "foreign-origin":
        headers["Origin"] = "https://evil.example"
    elif case == "null-origin":
        headers["Origin"] = "null"
    elif case == "no-cookie":
        site.cookies.clear()
    elif case == "too-large":
        data["pad"] = "x" * 20_000
    elif case == "two-lines":
        data["code"] = "line-one\nline-two"
    elif case == "blank":
        data["code"] = "   "
    answer = await site.post(f"/auth/{token}", data=data, headers=headers)
    assert answer.status_code == status, answer.text
    assert message in answer.text
    assert "the-code-123" not in answer.text
    manager = manager_for(kernel)
    assert (await kernel.store.boxes.get("refuse")).status is BoxStatus.PENDING
    logs = await manager.runtime.logs("refuse", 50)
    assert "checking" not in logs  # the box's login never got a line
    await manager.destroy("refuse")


async def test_unknown_links_and_ready_boxes(kernel, site):
    missing = await site.post(f"/auth/{'a' * 64}", data={"code": "x", "csrf": "y"})
    assert missing.status_code == 404 and "not valid" in missing.text
    assert (await site.get("/auth/short")).status_code == 404
    token = await pending(kernel, "done1")
    _, field = await page_and_form(site, token)
    ok = await site.post(f"/auth/{token}", data={"csrf": field, "code": "good-code"})
    assert ok.status_code == 200 and "is ready" in ok.text
    again = await site.get(f"/auth/{token}")
    assert "is ready" in again.text and "<form" not in again.text
    await manager_for(kernel).destroy("done1")


async def test_an_unreachable_engine_is_a_clear_503(kernel, site, monkeypatch):
    token = await pending(kernel, "down1")
    manager = manager_for(kernel)

    async def unreachable(session):
        raise RuntimeUnavailable("docker engine at unix:///nowhere is unreachable")

    monkeypatch.setattr(manager, "login_url", unreachable)
    page = await site.get(f"/auth/{token}")
    assert page.status_code == 503 and "cannot be reached" in page.text
    monkeypatch.undo()
    await manager.destroy("down1")


def test_only_web_links_from_the_box_become_links():
    assert _web_link("https://login.example.test/x?a=1")[1] == "login.example.test"
    for bad in ("javascript:alert(1)", "data:text/html,hi", "ftp://x.test/", "https://", None):
        assert _web_link(bad) is None
    assert _web_link('https://x.test/"><script>')[0] == "https://x.test/&quot;&gt;&lt;script&gt;"
