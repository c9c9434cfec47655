"""The REST API over real HTTP on 127.0.0.1: bearer tokens bound to an owner, owner scoping,
write-only credentials, vend, stable JSON errors, the OpenAPI document, the OAuth callback's
single-use state."""

from __future__ import annotations

import anyio
import httpx
import pytest

from valetkey_broker.api import create_api_token
from valetkey_broker.openapi import document


def token_for(kernel, owner):
    async def make():
        async with kernel:
            return (await create_api_token(kernel, owner))[1]

    return anyio.run(make)


@pytest.fixture
def api(serve, make_kernel):
    url, _kernel = serve()
    admin = make_kernel()  # a second kernel on the same home mints tokens, like the CLI would
    ann = httpx.Client(
        base_url=f"{url}/api", headers={"Authorization": f"Bearer {token_for(admin, 'ann')}"}
    )
    bob = httpx.Client(
        base_url=f"{url}/api", headers={"Authorization": f"Bearer {token_for(admin, 'bob')}"}
    )
    anon = httpx.Client(base_url=f"{url}/api")
    yield ann, bob, anon
    for client in (ann, bob, anon):
        client.close()


def error_of(response):
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return response.status_code, body["error"]["code"], body["error"]["message"]


def test_requests_without_a_valid_token_are_401(api):
    _ann, _bob, anon = api
    assert error_of(anon.get("/connections")) == (
        401,
        "unauthorized",
        "missing bearer token: send 'Authorization: Bearer <API token>'",
    )
    wrong = anon.get("/connections", headers={"Authorization": "Bearer vk_nope"})
    assert error_of(wrong) == (401, "unauthorized", "unknown or revoked API token")
    assert wrong.headers["www-authenticate"] == 'Bearer realm="valetkey"'


def test_create_store_vend_and_the_owner_comes_from_the_token(api):
    ann, bob, _anon = api
    created = ann.post("/connections", json={"connector": "keyco", "label": "work"})
    assert created.status_code == 201
    conn = created.json()
    assert conn["connector"] == "keyco" and conn["status"] == "ACTIVE" and "owner" not in conn
    stored = ann.post(f"/connections/{conn['id']}/credentials", json={"api_key": "sk-live-1234567"})
    assert stored.status_code == 204 and stored.content == b""
    vend = ann.post(f"/connections/{conn['id']}/token")
    assert vend.json()["token"] == "sk-live-1234567"
    assert vend.headers["cache-control"] == "no-store"
    assert [c["id"] for c in ann.get("/connections").json()] == [conn["id"]]
    assert bob.get("/connections").json() == []


def test_a_foreign_connection_is_not_found_everywhere(api):
    ann, bob, _anon = api
    cid = ann.post("/connections", json={"connector": "keyco"}).json()["id"]
    ann.post(f"/connections/{cid}/credentials", json={"api_key": "sk-live-1234567"})
    missing = error_of(bob.get("/connections/conn_missing"))
    for response in (
        bob.get(f"/connections/{cid}"),
        bob.post(f"/connections/{cid}/token"),
        bob.patch(f"/connections/{cid}", json={"status": "REVOKED"}),
        bob.delete(f"/connections/{cid}"),
        bob.post(f"/connections/{cid}/credentials", json={"api_key": "sk-evil-00000"}),
    ):
        status, code, message = error_of(response)
        assert (status, code) == (404, "not_found")
        assert message == missing[2].replace("conn_missing", cid)
    assert ann.post(f"/connections/{cid}/token").json()["token"] == "sk-live-1234567"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"[1]", "request body must be a JSON object"),
        (
            b'{"connector": "keyco", "owner": "bob"}',
            "unknown field 'owner' (allowed: connector, label)",
        ),
        (b'{"label": "x"}', "field 'connector' is required"),
        (b'{"connector": 5}', "field 'connector' must be a non-empty string"),
    ],
)
def test_bad_bodies_are_400_and_change_nothing(api, body, message):
    ann, _bob, _anon = api
    response = ann.post("/connections", content=body, headers={"Content-Type": "application/json"})
    assert error_of(response) == (400, "invalid_input", message)
    assert ann.get("/connections").json() == []


def test_unknown_connector_and_oversize_body(api):
    ann, _bob, _anon = api
    assert error_of(ann.post("/connections", json={"connector": "nope"}))[:2] == (404, "not_found")
    big = ann.post("/connections", content=b"{" + b" " * 70000 + b"}")
    assert error_of(big)[:2] == (400, "invalid_input")


def test_revoke_by_patch_then_vend_is_gone(api):
    ann, _bob, _anon = api
    cid = ann.post("/connections", json={"connector": "keyco"}).json()["id"]
    ann.post(f"/connections/{cid}/credentials", json={"api_key": "sk-live-1234567"})
    assert (
        ann.patch(f"/connections/{cid}", json={"status": "REVOKED"}).json()["status"] == "REVOKED"
    )
    assert error_of(ann.post(f"/connections/{cid}/token"))[:2] == (410, "revoked")
    assert error_of(ann.patch(f"/connections/{cid}", json={"status": "ACTIVE"}))[0] == 400
    assert ann.delete(f"/connections/{cid}").status_code == 204
    assert error_of(ann.get(f"/connections/{cid}"))[0] == 404


def test_unknown_routes_and_methods_keep_the_error_shape(api):
    ann, _bob, _anon = api
    assert error_of(ann.get("/nope"))[:2] == (404, "not_found")
    assert error_of(ann.put("/connections"))[:2] == (405, "method_not_allowed")


def test_a_callback_with_an_unknown_state_is_refused(api):
    _ann, _bob, anon = api
    assert error_of(anon.get("/oauth/callback", params={"state": "forged", "code": "c"})) == (
        400,
        "invalid_input",
        "unknown, expired or already used login state",
    )


def test_openapi_document_lists_every_route(api):
    _ann, _bob, anon = api
    served = anon.get("/openapi.json").json()
    assert served == document()
    assert set(served["paths"]) == {
        "/connectors",
        "/connections",
        "/connections/{id}",
        "/connections/{id}/credentials",
        "/connections/{id}/token",
        "/connections/{id}/oauth/start",
        "/oauth/callback",
    }


def test_a_revoked_api_token_stops_working_within_the_cache_time(serve, make_kernel, monkeypatch):
    import time

    from valetkey_broker import api as api_module

    monkeypatch.setattr(api_module, "TOKEN_CACHE_SECONDS", 0.2)
    url, _kernel = serve()
    admin = make_kernel()

    async def make_and_revoke(revoke_id=None):
        async with admin:
            if revoke_id is not None:
                await admin.store.api_tokens.delete(revoke_id)
                return None
            return await create_api_token(admin, "ann")

    record, token = anyio.run(make_and_revoke)
    client = httpx.Client(base_url=f"{url}/api", headers={"Authorization": f"Bearer {token}"})
    assert client.get("/connections").status_code == 200
    anyio.run(make_and_revoke, record.id)
    time.sleep(0.3)
    assert error_of(client.get("/connections")) == (
        401,
        "unauthorized",
        "unknown or revoked API token",
    )
    client.close()
