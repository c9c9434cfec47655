"""The admin UI (``/admin``) in-process against the real oidc-provider: who may see and act
(no session → 401 / redirect, not an admin → 403, bad CSRF or foreign Origin → 403), join tokens
(shown once, stored only as SHA-256, one-time, TTL > 0, revocable), spokes, and boxes on a real
dockerd (listed escaped, destroyed). Also :mod:`valetkey_boxes.jointokens` itself."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from valetkey_hookspecs import InvalidInput, NotFound, Spoke, utcnow

_spec = importlib.util.spec_from_file_location(
    "valetkey_boxes_tests_web_helpers", Path(__file__).with_name("web_helpers.py")
)
assert _spec is not None and _spec.loader is not None
web = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = web
_spec.loader.exec_module(web)

oidc_server = web.load_oidc_fixture().oidc_server
pytestmark = pytest.mark.anyio

__all__ = ["oidc_server"]


@pytest.fixture
async def kernel(home, oidc_server):
    k = web.web_kernel(home, oidc=web.oidc_table(oidc_server), admins=[web.ADMIN])
    async with k:
        yield k


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


@contextlib.asynccontextmanager
async def admin_client(kernel, server, account=web.ADMIN):
    async with web.browser(kernel) as client:
        done = await web.sign_in(client, server, account)
        assert done.status_code == 303 and done.headers["location"] == "/admin/", done.text
        yield client


# --------------------------------------------------------------------------- join tokens


async def test_join_tokens_are_random_hashed_one_time_and_need_a_ttl(kernel):
    from valetkey_boxes.jointokens import (
        consume_join_token,
        create_join_token,
        hash_join_token,
        join_token_state,
        parse_ttl,
    )

    assert parse_ttl("1h") == timedelta(hours=1) and parse_ttl("90") == timedelta(seconds=90)
    for bad in ("0", "0s", "-1h", "1y", "", "31d"):
        with pytest.raises(InvalidInput, match="ttl"):
            parse_ttl(bad)
    with pytest.raises(InvalidInput, match="greater than zero"):
        await create_join_token(kernel.store, timedelta(0))
    minted = await create_join_token(kernel.store, timedelta(hours=1))
    other = await create_join_token(kernel.store, timedelta(hours=1))
    assert minted.token != other.token and minted.token.startswith("vkjoin_")
    assert len(minted.token) == len("vkjoin_") + 43  # 32 random bytes, URL-safe base64
    assert minted.token not in repr(minted)
    stored = await kernel.store.spokes.list_join_tokens()
    assert minted.record in stored
    assert minted.record.token_hash == hashlib.sha256(minted.token.encode()).hexdigest()
    assert hash_join_token(minted.token) == minted.record.token_hash
    used = await consume_join_token(kernel.store, minted.token, "spoke-a")
    assert used.used_by == "spoke-a" and join_token_state(used) == "used"
    with pytest.raises(NotFound):
        await consume_join_token(kernel.store, minted.token, "spoke-b")  # one time
    expired = await create_join_token(
        kernel.store, timedelta(minutes=1), now=utcnow() - timedelta(hours=1)
    )
    assert join_token_state(expired.record) == "expired"
    with pytest.raises(NotFound):
        await consume_join_token(kernel.store, expired.token, "spoke-c")


# --------------------------------------------------------------------------- who may


async def test_no_session_gets_401_or_a_sign_in(kernel):
    async with web.browser(kernel) as client:
        page = await client.get("/admin/")
        assert page.status_code == 303 and page.headers["location"] == "/login/?return_to=/admin/"
        for path in (
            "/admin/tokens",
            "/admin/tokens/jt_x/revoke",
            "/admin/spokes/s/delete",
            "/admin/boxes/b/destroy",
        ):
            r = await client.post(path, data={"csrf": "x", "ttl": "1h"})
            assert r.status_code == 401, path
    assert await kernel.store.spokes.list_join_tokens() == []


async def test_a_non_admin_gets_403(kernel, oidc_server):
    client = web.browser(kernel)
    async with client:
        done = await web.sign_in(client, oidc_server, web.ALLOWED)
        assert done.status_code == 303
        page = await client.get("/admin/")
        assert page.status_code == 403 and "not an admin" in page.text
        from valetkey_boxes.websession import csrf_token

        good_csrf = csrf_token(client.cookies["valetkey_session"])
        r = await client.post("/admin/tokens", data={"csrf": good_csrf, "ttl": "1h"})
        assert r.status_code == 403
    assert await kernel.store.spokes.list_join_tokens() == []


async def test_an_admin_needs_the_csrf_token_and_a_same_origin(kernel, oidc_server):
    async with admin_client(kernel, oidc_server) as client:
        page = await client.get("/admin/")
        assert page.status_code == 200
        csrf = csrf_of(page.text)
        assert (await client.post("/admin/tokens", data={"ttl": "1h"})).status_code == 403
        forged = await client.post("/admin/tokens", data={"csrf": "f" * 64, "ttl": "1h"})
        assert forged.status_code == 403
        cross = await client.post(
            "/admin/tokens",
            data={"csrf": csrf, "ttl": "1h"},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        framed = await client.post(
            "/admin/tokens", data={"csrf": csrf, "ttl": "1h"}, headers={"Origin": "null"}
        )
        assert framed.status_code == 403  # a sandboxed frame or a data: page
        assert await kernel.store.spokes.list_join_tokens() == []
        ok = await client.post(
            "/admin/tokens", data={"csrf": csrf, "ttl": "1h"}, headers={"Origin": web.PUBLIC_URL}
        )
        assert ok.status_code == 201


async def test_the_admin_ui_is_off_without_admins(home, oidc_server):
    k = web.web_kernel(home, oidc=web.oidc_table(oidc_server))
    async with k, web.browser(k) as client:
        assert (await client.get("/admin/")).status_code == 404


# --------------------------------------------------------------------------- actions


async def test_an_admin_creates_and_revokes_join_tokens_and_deletes_spokes(kernel, oidc_server):
    await kernel.store.spokes.put(
        Spoke(
            id="sp_1",
            name="<i>edge</i>",
            credential_hash="c" * 64,
            last_seen_at=utcnow(),
        )
    )
    async with admin_client(kernel, oidc_server) as client:
        page = await client.get("/admin/")
        assert page.status_code == 200
        html = page.text
        assert (
            'name="viewport"' in html
            and "<script" not in html
            and "http" not in html.split("<main>")[0].replace("http-equiv", "")
        )
        assert "&lt;i&gt;edge&lt;/i&gt;" in html and "<i>edge</i>" not in html
        assert "connected" in html
        csrf = csrf_of(html)
        created = await client.post("/admin/tokens", data={"csrf": csrf, "ttl": "15m"})
        assert created.status_code == 201
        token = re.search(r'id="token">([^<]+)<', created.text).group(1)
        assert token.startswith("vkjoin_")
        assert "--name SPOKE-NAME --token-stdin" in created.text
        assert f"--token {token}" not in created.text  # never on a command line
        assert created.headers["cache-control"] == "no-store"
        [record] = await kernel.store.spokes.list_join_tokens()
        assert record.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert timedelta(minutes=14) < record.expires_at - utcnow() <= timedelta(minutes=15)
        listed = await client.get("/admin/")
        assert record.id in listed.text and token not in listed.text  # shown once
        bad_ttl = await client.post("/admin/tokens", data={"csrf": csrf, "ttl": "0"})
        assert bad_ttl.status_code == 400 and "greater than zero" in bad_ttl.text
        revoked = await client.post(f"/admin/tokens/{record.id}/revoke", data={"csrf": csrf})
        assert revoked.status_code == 303 and revoked.headers["location"].startswith("/admin/")
        assert await kernel.store.spokes.list_join_tokens() == []
        again = await client.post(f"/admin/tokens/{record.id}/revoke", data={"csrf": csrf})
        assert again.status_code == 404
        deleted = await client.post("/admin/spokes/sp_1/delete", data={"csrf": csrf})
        assert deleted.status_code == 303
        assert await kernel.store.spokes.list() == []
        after = await client.get(deleted.headers["location"])
        assert "The spoke was deleted." in after.text
    audit = [e.action for e in await kernel.store.audit.list()]
    assert {"spoke.join_token.create", "spoke.join_token.revoke", "spoke.delete"} <= set(audit)


@pytest.mark.slow
async def test_an_admin_sees_boxes_escaped_and_destroys_one(make_kernel, oidc_server):
    from valetkey_boxes.manager import manager_for

    k = make_kernel(oidc=web.oidc_table(oidc_server), admins=[web.ADMIN])
    async with k:
        manager = manager_for(k)
        await manager.create("admin-box", description='<img src=x onerror="alert(1)">')
        async with admin_client(k, oidc_server) as client:
            page = await client.get("/admin/")
            assert "admin-box" in page.text
            assert "<img src=x" not in page.text
            assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page.text
            csrf = csrf_of(page.text)
            bad = await client.post("/admin/boxes/NOT_A_BOX/destroy", data={"csrf": csrf})
            assert bad.status_code == 400 and "box id" in bad.text
            done = await client.post("/admin/boxes/admin-box/destroy", data={"csrf": csrf})
            assert done.status_code == 303
            assert [b for b in await manager.list_boxes() if b["box_id"] == "admin-box"] == []
            again = await client.post("/admin/boxes/admin-box/destroy", data={"csrf": csrf})
            assert again.status_code == 404


def test_spoke_health():
    from valetkey_boxes.admin import spoke_health

    now = utcnow()
    fresh = Spoke(id="a", name="a", credential_hash="x", last_seen_at=now)
    stale = Spoke(id="b", name="b", credential_hash="y", last_seen_at=now - timedelta(hours=1))
    never = Spoke(id="c", name="c", credential_hash="z")
    assert spoke_health(fresh, now) == "connected"
    assert spoke_health(stale, now) == "disconnected"
    assert spoke_health(never, now) == "never seen"
    assert spoke_health(fresh, now, live=False) == "disconnected"  # the hub knows better
    assert spoke_health(never, now, live=True) == "connected"


async def test_on_a_hub_the_admin_ui_shows_who_is_connected(home, oidc_server):
    k = web.web_kernel(
        home, oidc=web.oidc_table(oidc_server), admins=[web.ADMIN], hub={"enabled": True}
    )
    async with k:
        await k.store.spokes.put(
            Spoke(id="sp_9", name="edge-9", credential_hash="d" * 64, last_seen_at=utcnow())
        )
        async with admin_client(k, oidc_server) as client:
            page = await client.get("/admin/")
            row = page.text.split("<code>edge-9</code>")[1].split("</tr>")[0]
            assert "disconnected" in row  # seen a moment ago, but no live link to this hub
