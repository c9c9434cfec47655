"""OIDC-gated activation against the real oidc-provider (tests/fixtures/oidc): configuration
errors, return-path validation, the login flow (PKCE, state, nonce, single use, browser binding),
the policy (verified e-mail, allow-lists, hosted domain), the session cookie and its expiry, the
ID token checks done by joserfc (nonce, audience, signature) and that no secret reaches a log or a
page. One test activates a real box on a real dockerd after signing in."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
import logging
import secrets
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from valetkey_hookspecs import ConfigError, utcnow

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
    k = web.web_kernel(
        home,
        oidc=web.oidc_table(oidc_server),
        admins=[web.ADMIN, web.NOT_ALLOWED_ADMIN],
    )
    async with k:
        yield k


@pytest.fixture
async def client(kernel):
    async with web.browser(kernel) as c:
        yield c


# --------------------------------------------------------------------------- configuration


def _config(**kw):
    from valetkey_boxes.config import BoxesConfig, OidcConfig

    oidc = kw.pop("oidc", None)
    return BoxesConfig(oidc=OidcConfig(**oidc) if oidc is not None else OidcConfig(), **kw)


def test_an_enabled_provider_needs_an_allow_list():
    with pytest.raises(ConfigError, match=r"oidc\.allowed_domains / .*oidc\.allowed_emails"):
        _config(oidc={"issuer": "https://id.example.com", "client_id": "x"})
    with pytest.raises(ConfigError, match=r"oidc\.client_id"):
        _config(oidc={"issuer": "https://id.example.com", "allowed_domains": ["example.com"]})
    with pytest.raises(ConfigError, match=r"oidc\.issuer: must be https"):
        _config(oidc={"issuer": "http://id.example.com", "client_id": "x", "allowed_emails": []})
    with pytest.raises(ConfigError, match=r"oidc\.allowed_domains: 'Example.com'"):
        _config(
            oidc={
                "issuer": "https://id.example.com",
                "client_id": "x",
                "allowed_domains": ["Example.com"],
            }
        )
    with pytest.raises(ConfigError, match=r"admins: the admin UI signs people in"):
        _config(admins=["a@example.com"])
    with pytest.raises(ConfigError, match=r"oidc\.session_ttl"):
        _config(oidc={"session_ttl": 0})
    ok = _config(
        oidc={"issuer": "https://id.example.com", "client_id": "x", "allowed_emails": ["a@b.c"]},
        admins=["a@b.c"],
    )
    assert ok.oidc.enabled and "client_secret" not in repr(ok.oidc).split("client_id")[0]
    assert not _config().oidc.enabled


def test_a_config_error_names_the_key_through_the_kernel(home):
    k = web.web_kernel(home, oidc={"issuer": "https://id.example.com", "client_id": "x"})
    with pytest.raises(ConfigError, match=r"\[plugin\.boxes\] oidc\.allowed_domains"):
        k.plugin_config("boxes")
    assert any("oidc.allowed_domains" in p for p in k.config_problems())


@pytest.mark.parametrize(
    "value",
    [
        "//evil.com",
        "//evil.com/auth/x",
        "/\\evil.com",
        "\\\\evil.com",
        "https://evil.com/auth/x",
        "http:/evil.com",
        "javascript:alert(1)",
        "/auth/../admin",
        "/auth/%2e%2e/x",
        "/elsewhere",
        "/auth/x\r\nSet-Cookie: a=b",
        "/auth/ x",
        "",
        "/admin" + "x" * 3000,
    ],
)
def test_return_paths_off_this_server_are_refused(value):
    from valetkey_boxes.websession import safe_return_path

    assert safe_return_path(value) is None


@pytest.mark.parametrize("value", ["/auth/" + "a" * 64, "/admin", "/admin/", "/admin/?done=x"])
def test_return_paths_on_this_server_are_kept(value):
    from valetkey_boxes.websession import safe_return_path

    assert safe_return_path(value) == value


async def test_login_refuses_a_bad_return_path(client):
    for bad in ("//evil.com", "https://evil.com/", "/\\evil.com"):
        r = await client.get("/login/", params={"return_to": bad})
        assert r.status_code == 400 and "not a page of this server" in r.text
        assert "location" not in r.headers


# --------------------------------------------------------------------------- the flow


async def test_an_allowed_verified_person_signs_in(client, kernel, oidc_server):
    target = "/auth/" + "0" * 64
    started = await client.get("/login/", params={"return_to": target})
    assert started.status_code == 303
    url = httpx.URL(started.headers["location"])
    assert str(url).startswith(oidc_server.authorization_endpoint)
    q = url.params
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert q["state"] and q["nonce"] and q["state"] != q["nonce"]
    assert q["client_id"] == oidc_server.web_client_id
    assert q["redirect_uri"] == f"{web.PUBLIC_URL}/login/callback"
    binding = started.headers["set-cookie"]
    assert "valetkey_login=" in binding and "HttpOnly" in binding and "SameSite=Lax" in binding
    # the flow is stored hashed, its verifier and nonce sealed
    flows = await kernel.store.transient.get(
        "boxes-login", hashlib.sha256(q["state"].encode()).hexdigest()
    )
    assert flows.sealed is not None and q["nonce"] not in json.dumps(dict(flows.data))

    callback = await asyncio.to_thread(oidc_server.approve_authorization, str(url), web.ALLOWED)
    done = await client.get(callback)
    assert done.status_code == 303 and done.headers["location"] == target
    cookies = done.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("valetkey_session="))
    assert "HttpOnly" in session and "SameSite=Lax" in session and "Path=/" in session
    assert "Secure" not in session  # public_url is http on loopback
    # past the gate: the auth page itself answers (an unknown link)
    page = await client.get(target)
    assert page.status_code == 404 and "not valid" in page.text
    # the session is in the store under the hash of the cookie, with an expiry
    sid = client.cookies["valetkey_session"]
    record = await kernel.store.transient.get(
        "boxes-web-session", hashlib.sha256(sid.encode()).hexdigest()
    )
    assert record.owner == web.ALLOWED and record.data["email_verified"] is True
    assert timedelta(hours=7) < record.expires_at - utcnow() <= timedelta(hours=8)


async def test_an_allowed_email_outside_the_domains_signs_in(client, oidc_server):
    done = await web.sign_in(client, oidc_server, web.GUEST, "/auth/" + "1" * 64)
    assert done.status_code == 303, done.text


async def test_an_unverified_email_is_refused(client, oidc_server):
    done = await web.sign_in(client, oidc_server, web.UNVERIFIED)
    assert done.status_code == 403 and "not verified" in done.text
    assert "valetkey_session" not in client.cookies


async def test_a_domain_not_on_the_list_is_refused(client, oidc_server):
    done = await web.sign_in(client, oidc_server, web.STRANGER)
    assert done.status_code == 403 and "not on the list" in done.text
    assert "valetkey_session" not in client.cookies
    page = await client.get("/auth/" + "0" * 64)
    assert page.status_code == 303  # still not signed in: back to the sign-in


async def test_a_replayed_login_state_is_refused(client, oidc_server):
    callback = await web.provider_callback(client, oidc_server, web.ALLOWED)
    first = await client.get(callback)
    assert first.status_code == 303
    client.cookies.clear()
    # the same callback again, even with a fresh binding cookie from a new start
    await client.get("/login/", params={"return_to": "/admin/"})
    again = await client.get(callback)
    assert again.status_code == 400 and "already used" in again.text
    assert "valetkey_session" not in client.cookies


async def test_a_callback_opened_in_another_browser_is_refused(kernel, oidc_server):
    async with web.browser(kernel) as attacker, web.browser(kernel) as victim:
        callback = await web.provider_callback(attacker, oidc_server, web.ALLOWED)
        hijack = await victim.get(callback)
        assert hijack.status_code == 400 and "another browser" in hijack.text
        assert "valetkey_session" not in victim.cookies
        # the flow was used up by the refusal: the attacker cannot finish it either
        late = await attacker.get(callback)
        assert late.status_code == 400


async def test_a_denied_sign_in_is_refused(client, oidc_server):
    started = await client.get("/login/", params={"return_to": "/admin/"})
    callback = await asyncio.to_thread(oidc_server.deny_authorization, started.headers["location"])
    done = await client.get(callback)
    assert done.status_code == 401 and "access_denied" in done.text


async def test_a_forged_state_is_refused(client):
    await client.get("/login/", params={"return_to": "/admin/"})
    forged = await client.get("/login/callback", params={"state": "x" * 43, "code": "y" * 43})
    assert forged.status_code == 400 and "unknown, expired" in forged.text


async def test_the_auth_page_sends_a_stranger_to_sign_in(client):
    target = "/auth/" + "a" * 64
    page = await client.get(target)
    assert page.status_code == 303
    assert page.headers["location"] == f"/login/?return_to={target}"
    post = await client.post(target, data={"csrf": "x", "code": "y"})
    assert post.status_code == 401 and "Sign in" in post.text


async def test_an_admin_not_on_the_allow_lists_may_not_activate(client, oidc_server):
    done = await web.sign_in(client, oidc_server, web.NOT_ALLOWED_ADMIN, "/auth/" + "a" * 64)
    assert done.status_code == 303  # an admin gets a session…
    page = await client.get("/auth/" + "a" * 64)
    assert page.status_code == 403 and "not on the list" in page.text  # …but activates nothing


async def test_the_hosted_domain_must_match(home, oidc_server):
    k = web.web_kernel(home, oidc=web.oidc_table(oidc_server, hosted_domain="corp.test"), admins=[])
    async with k, web.browser(k) as client:
        refused = await web.sign_in(client, oidc_server, web.GUEST)  # allowed, but hd other.test
        assert refused.status_code == 403 and "hosted domain" in refused.text
        client.cookies.clear()
        ok = await web.sign_in(client, oidc_server, web.ALLOWED, "/auth/" + "b" * 64)
        assert ok.status_code == 303


async def test_sessions_expire_and_are_purged_and_sign_out_works(client, kernel, oidc_server):
    await web.sign_in(client, oidc_server, web.ALLOWED)
    target = "/auth/" + "c" * 64
    assert (await client.get(target)).status_code == 404  # signed in
    # sign out needs the session's CSRF token
    refused = await client.post("/login/logout", data={"csrf": "nope"})
    assert refused.status_code == 403
    from valetkey_boxes.websession import csrf_token

    sid = client.cookies["valetkey_session"]
    out = await client.post("/login/logout", data={"csrf": csrf_token(sid)})
    assert out.status_code == 200 and "signed out" in out.text
    assert (await client.get(target)).status_code == 303
    # a new session, then time passes: the purge removes it
    await web.sign_in(client, oidc_server, web.ALLOWED)
    assert (await client.get(target)).status_code == 404
    purged = await kernel.store.transient.purge_expired(utcnow() + timedelta(hours=9))
    assert purged >= 1
    assert (await client.get(target)).status_code == 303


async def test_no_secret_reaches_a_log_or_a_page(client, oidc_server, caplog):
    caplog.set_level(logging.DEBUG)
    callback = await web.provider_callback(client, oidc_server, web.ALLOWED)
    code = httpx.URL(callback).params["code"]
    done = await client.get(callback)
    assert done.status_code == 303
    sid = client.cookies["valetkey_session"]
    page = await client.get("/auth/" + "d" * 64)
    from valetkey_hookspecs.redaction import redact_text

    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("valetkey"))
    assert "signed in: alice@corp.test" in ours
    # every record as valetkey's log handler writes it (the test's own client logs the callback
    # URL through httpx: the redacting handler hides the code)
    written = redact_text(caplog.text)
    for secret in (code, sid, oidc_server.web_client_secret):
        assert secret not in ours and secret not in written
        assert secret not in page.text and secret not in done.text


# --------------------------------------------------------------------------- the ID token


async def _tokens(server, nonce: str, verifier: str):
    """A real authorization code and token response for the web client (no valetkey code)."""
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {
        "response_type": "code",
        "client_id": server.web_client_id,
        "redirect_uri": f"{web.PUBLIC_URL}/login/callback",
        "scope": "openid email",
        "state": secrets.token_urlsafe(16),
        "nonce": nonce,
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    url = str(httpx.URL(server.authorization_endpoint, params=params))
    callback = await asyncio.to_thread(server.approve_authorization, url, web.ALLOWED)
    return httpx.URL(callback).params["code"]


async def test_the_id_token_is_checked_by_the_library(oidc_server):
    from valetkey_boxes.config import OidcConfig
    from valetkey_boxes.oidc import OidcClient, SignInRefused

    config = OidcConfig(**web.oidc_table(oidc_server))
    client = OidcClient(config)
    try:
        verifier = secrets.token_urlsafe(48)
        code = await _tokens(oidc_server, "the-nonce", verifier)
        redirect = f"{web.PUBLIC_URL}/login/callback"
        with pytest.raises(SignInRefused, match="refused the code"):
            await client.exchange(code, "wrong-verifier-" + "x" * 40, redirect)  # PKCE
        code = await _tokens(oidc_server, "the-nonce", verifier)
        tokens = await client.exchange(code, verifier, redirect)
        id_token = tokens["id_token"]
        claims = await client.validate_id_token(id_token, "the-nonce")
        assert claims["aud"] == oidc_server.web_client_id and claims["iss"] == oidc_server.issuer
        with pytest.raises(SignInRefused, match="nonce"):
            await client.validate_id_token(id_token, "another-nonce")
        head, body, sig = id_token.split(".")
        with pytest.raises(SignInRefused, match="signature"):
            await client.validate_id_token(f"{head}.{body}.{sig[::-1]}", "the-nonce")
        forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        forged["email"] = "root@corp.test"
        forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        with pytest.raises(SignInRefused, match="signature"):
            await client.validate_id_token(f"{head}.{forged_body}.{sig}", "the-nonce")
        unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
        with pytest.raises(SignInRefused):
            await client.validate_id_token(f"{unsigned}.{body}.", "the-nonce")
        other = OidcClient(OidcConfig(**web.oidc_table(oidc_server, client_id="someone-else")))
        try:
            with pytest.raises(SignInRefused, match="aud"):
                await other.validate_id_token(id_token, "the-nonce")
        finally:
            await other.aclose()
    finally:
        await client.aclose()


async def test_discovery_must_name_the_configured_issuer(oidc_server):
    from valetkey_boxes.config import OidcConfig
    from valetkey_boxes.oidc import OidcClient, SignInRefused

    # the same server under another spelling of its address: the document names the real one
    alias = oidc_server.issuer.replace("127.0.0.1", "localhost")
    client = OidcClient(OidcConfig(**web.oidc_table(oidc_server, issuer=alias)))
    try:
        with pytest.raises(SignInRefused, match="another issuer"):
            await client.metadata()
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- a real box


@pytest.mark.slow
async def test_an_allowed_person_activates_a_box(make_kernel, oidc_server):
    from valetkey_boxes.manager import manager_for

    k = make_kernel(oidc=web.oidc_table(oidc_server))
    async with k, web.browser(k) as client:
        created = await manager_for(k).create("oidc-box", description="<b>untrusted</b>")
        path = httpx.URL(created.auth_url).path
        page = await client.get(path)
        assert page.status_code == 303  # sign in first
        started = await client.get(page.headers["location"])
        callback = await asyncio.to_thread(
            oidc_server.approve_authorization, started.headers["location"], web.ALLOWED
        )
        back = await client.get(callback)
        assert back.status_code == 303 and back.headers["location"] == path
        for _ in range(75):
            page = await client.get(path)
            if "login.example.test" in page.text:
                break
            await asyncio.sleep(0.2)
        assert page.status_code == 200 and "&lt;b&gt;untrusted&lt;/b&gt;" in page.text
        field = page.text.split('name="csrf" value="')[1].split('"')[0]
        done = await client.post(path, data={"csrf": field, "code": "good-code-123"})
        assert done.status_code == 200 and "is ready" in done.text, done.text
        await manager_for(k).destroy("oidc-box")


def test_cookies_are_secure_over_https():
    from valetkey_boxes.config import BoxesConfig, OidcConfig
    from valetkey_boxes.websession import WebAuth

    oidc = OidcConfig(issuer="https://id.example.com", client_id="x", allowed_emails=["a@b.c"])
    auth = WebAuth(None, BoxesConfig(public_url="https://vk.example.com", oidc=oidc))
    cookie = auth.cookie("valetkey_session", "v", "/", 60)
    assert cookie.endswith("; Secure") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert auth.redirect_uri == "https://vk.example.com/login/callback"


def test_look_alike_unicode_addresses_match_no_allow_list_or_admin():
    from valetkey_boxes.config import BoxesConfig, OidcConfig
    from valetkey_boxes.oidc import Identity, is_admin, refusal

    oidc = OidcConfig(
        issuer="https://idp.test",
        client_id="c",
        allowed_domains=["kernel.org"],
        allowed_emails=["kim@corp.test"],
    )
    config = BoxesConfig(oidc=oidc, admins=["kim@corp.test"])
    kelvin = "\u212a"  # KELVIN SIGN: lower() makes it a plain "k"
    for email in (f"eve@{kelvin}ernel.org", f"{kelvin}im@corp.test"):
        who = Identity("https://idp.test", "s1", email, True)
        assert refusal(oidc, who) == (
            "this e-mail address has non-ASCII characters; ask for an ASCII address"
        )
        assert not is_admin(config, who)
    plain = Identity("https://idp.test", "s2", "Kim@Corp.Test", True)
    assert refusal(oidc, plain) is None and is_admin(config, plain)
