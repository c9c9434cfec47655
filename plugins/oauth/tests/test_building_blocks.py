"""PKCE, the loopback receiver, the token bucket, client configuration and response parsing —
the parts that need no authorization server."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from valetkey_hookspecs import (
    AuthSpec,
    AuthType,
    ConfigError,
    Connector,
    RateLimited,
    RateProfile,
    Secret,
    Unauthorized,
)
from valetkey_oauth import pkce, ratelimit
from valetkey_oauth.config import ClientConfig, OAuthConfig, env_prefix, resolve_client
from valetkey_oauth.exchanger import ProviderError, parse_token_response
from valetkey_oauth.loopback import LoginTimeout, LoopbackReceiver
from valetkey_oauth.provider import OAuthProvider, browser_plausible
from valetkey_oauth.ratelimit import TokenBucket

pytestmark = pytest.mark.anyio

B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


def connector(**auth):
    spec = {
        "type": AuthType.OAUTH2,
        "authorize_url": "https://idp.example.test/authorize?tenant=t1",
        "token_url": "https://idp.example.test/token",
        "scopes": ("read", "write"),
        **auth,
    }
    return Connector(slug="acme-cloud", name="Acme", auth=AuthSpec(**spec))


# --------------------------------------------------------------------------- PKCE


def test_rfc7636_appendix_b_vector():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce.challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifier_and_state_are_43_char_random_base64url():
    verifiers = {pkce.new_verifier() for _ in range(50)}
    states = {pkce.new_state() for _ in range(50)}
    assert len(verifiers) == len(states) == 50
    for value in verifiers | states:
        assert len(value) == 43 and B64URL.match(value)
    assert len(pkce.challenge(next(iter(verifiers)))) == 43


def test_authorization_url_carries_s256_challenge_state_and_scopes():
    conn = connector(extra_authorize_params={"access_type": "offline", "state": "evil"})
    provider = OAuthProvider(OAuthConfig(clients={"acme-cloud": ClientConfig("cid")}), env={})
    request = provider.authorization_request(conn, "http://127.0.0.1:5000/callback")
    url = urlsplit(request.url)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://idp.example.test/authorize"
    assert query["tenant"] == "t1"  # the authorize URL's own query is kept
    assert query["response_type"] == "code" and query["client_id"] == "cid"
    assert query["redirect_uri"] == "http://127.0.0.1:5000/callback"
    assert query["scope"] == "read write" and "%20" in request.url
    assert query["state"] == request.state  # extra params cannot override the state
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == pkce.challenge(request.verifier)
    assert query["access_type"] == "offline"
    assert request.verifier not in request.url
    assert request.verifier not in repr(request)
    assert request.scopes == ("read", "write")

    plain = provider.authorization_request(connector(pkce=False), "http://127.0.0.1:1/callback")
    assert plain.verifier is None and "code_challenge" not in plain.url


def test_a_comma_scope_separator_is_used_where_the_provider_wants_it():
    provider = OAuthProvider(OAuthConfig(clients={"acme-cloud": ClientConfig("cid")}), env={})
    request = provider.authorization_request(
        connector(scope_separator=","), "http://127.0.0.1:5000/callback"
    )
    query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
    assert query["scope"] == "read,write"


# --------------------------------------------------------------------------- loopback receiver


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, timeout=5)


async def test_loopback_binds_127_0_0_1_and_serves_only_get_callback():
    async with LoopbackReceiver("Acme") as rx:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", rx.redirect_uri)
        base = rx.redirect_uri.rsplit("/", 1)[0]
        rx.expect("s1")
        assert (await _get(f"{base}/")).status_code == 404
        assert (await _get(f"{base}/favicon.ico")).status_code == 404
        assert (await _get(f"{base}/callback/extra?code=c&state=s1")).status_code == 404
        async with httpx.AsyncClient() as client:
            post = await client.post(rx.redirect_uri, data={"code": "c", "state": "s1"})
        assert post.status_code == 405 and post.headers["allow"] == "GET"
        assert not rx.done


async def test_loopback_first_callback_wins_and_pages_never_echo_the_code():
    async with LoopbackReceiver("Acme") as rx:
        rx.expect("good-state")
        code = "SplxlOBeZQQYbYS6WxSbIA-secret-code"
        first = await _get(f"{rx.redirect_uri}?code={code}&state=good-state")
        callback = await rx.wait(5)
        assert callback.code == code and code not in repr(callback)
        assert first.status_code == 200
        assert "You can close this tab" in first.text and code not in first.text
        assert first.headers["cache-control"] == "no-store"
        assert first.headers["referrer-policy"] == "no-referrer"
        later = await _get(f"{rx.redirect_uri}?code=other-code&state=good-state")
        assert "already" in later.text and "other-code" not in later.text
        assert (await rx.wait(1)).code == code  # still the first one


async def test_loopback_error_callback_is_a_clear_unauthorized():
    async with LoopbackReceiver("Acme") as rx:
        rx.expect("st")
        page = await _get(
            f"{rx.redirect_uri}?error=access_denied&error_description=The+user+said+no&state=st"
        )
        with pytest.raises(
            Unauthorized,
            match=r"sign-in to Acme was not authorized "
            r"\(access_denied: The user said no\)",
        ):
            await rx.wait(5)
    assert "Sign-in failed" in page.text and "access_denied" in page.text


async def test_loopback_rejects_state_mismatch_and_keeps_waiting_for_the_real_callback():
    told: list[str] = []
    async with LoopbackReceiver("Acme", on_reject=told.append) as rx:
        rx.expect("the-real-state")
        forged = await _get(f"{rx.redirect_uri}?code=attacker-code&state=forged")
        missing = await _get(f"{rx.redirect_uri}?code=attacker-code")
        error = await _get(f"{rx.redirect_uri}?error=access_denied&state=forged")
        assert forged.status_code == missing.status_code == error.status_code == 400
        assert "state mismatch" in forged.text and "attacker-code" not in forged.text
        assert "no state" in missing.text
        assert not rx.done
        assert rx.rejected == [
            "state mismatch",
            "the callback has no state parameter",
            "state mismatch",
        ]
        assert len(told) == 3 and "does not belong to this sign-in" in told[0]
        await _get(f"{rx.redirect_uri}?code=real-code&state=the-real-state")
        assert (await rx.wait(5)).code == "real-code"


async def test_loopback_timeout_says_what_happened():
    async with LoopbackReceiver("Acme") as rx:
        rx.expect("st")
        with pytest.raises(LoginTimeout, match=r"no sign-in to Acme came back to http://127"):
            await rx.wait(0.2)
        await _get(f"{rx.redirect_uri}?code=x&state=wrong")
        with pytest.raises(
            LoginTimeout,
            match=r"1 callback that did not belong to this "
            r"sign-in \(state mismatch\) was rejected",
        ):
            await rx.wait(0.2)
    with pytest.raises(httpx.ConnectError):
        await _get(rx.redirect_uri)  # closed with the context


# --------------------------------------------------------------------------- token bucket


class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_bucket_allows_a_burst_then_fails_fast_without_consuming():
    clock = FakeTime()
    bucket = TokenBucket(RateProfile(5, 60), label="acme", clock=clock, sleep=clock.sleep)
    for _ in range(5):
        assert await bucket.acquire(wait=False) == 0
    with pytest.raises(
        RateLimited,
        match=r"rate limit of acme reached \(5 requests per 60 s\): "
        r"nothing was sent; retry in 12.0 s",
    ) as info:
        await bucket.acquire(wait=False)
    assert info.value.retry_after == pytest.approx(12.0)
    with pytest.raises(RateLimited):
        await bucket.acquire(wait=False)  # a refusal consumed nothing
    clock.now += 12
    assert await bucket.acquire(wait=False) == 0
    assert bucket.available == pytest.approx(0)


async def test_bucket_waits_in_turn_and_a_cancelled_wait_gives_its_token_back():
    clock = FakeTime()
    bucket = TokenBucket(RateProfile(2, 10), clock=clock, sleep=clock.sleep)
    await bucket.acquire(wait=True)
    await bucket.acquire(wait=True)
    assert await bucket.acquire(wait=True) == pytest.approx(5.0)
    assert clock.slept == [pytest.approx(5.0)]

    real = TokenBucket(RateProfile(1, 60))
    await real.acquire(wait=True)
    waiter = asyncio.ensure_future(real.acquire(wait=True))
    await asyncio.sleep(0.01)
    assert real.available == pytest.approx(-1, abs=0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert real.available == pytest.approx(0, abs=0.01)


def test_buckets_are_shared_per_slug_and_follow_profile_changes():
    a = Connector(slug="s", name="S", auth=AuthSpec(AuthType.OAUTH2), rate=RateProfile(5))
    assert ratelimit.bucket_for(a) is ratelimit.bucket_for(a)
    changed = Connector(slug="s", name="S", auth=AuthSpec(AuthType.OAUTH2), rate=RateProfile(9))
    assert ratelimit.bucket_for(changed).profile.requests == 9
    assert ratelimit.bucket_for(Connector(slug="n", name="N", auth=a.auth)) is None


# --------------------------------------------------------------------------- client config


def test_client_from_env_wins_and_slugs_are_mangled():
    config = OAuthConfig(clients={"google-drive": ClientConfig("from-toml", "toml-secret")})
    assert env_prefix("google-drive") == "VALETKEY_OAUTH_GOOGLE_DRIVE_"
    from_toml = resolve_client("google-drive", config, env={})
    assert (from_toml.client_id, from_toml.client_secret) == ("from-toml", "toml-secret")
    env = {
        "VALETKEY_OAUTH_GOOGLE_DRIVE_CLIENT_ID": "from-env",
        "VALETKEY_OAUTH_GOOGLE_DRIVE_CLIENT_SECRET": "env-secret",
    }
    from_env = resolve_client("google-drive", config, env=env)
    assert (from_env.client_id, from_env.client_secret) == ("from-env", "env-secret")
    assert "env-secret" not in repr(from_env) and "toml-secret" not in repr(config)


def test_missing_client_id_names_both_ways_to_set_it():
    with pytest.raises(ConfigError) as info:
        resolve_client("acme-cloud", OAuthConfig(), env={})
    message = str(info.value)
    assert "VALETKEY_OAUTH_ACME_CLOUD_CLIENT_ID" in message
    assert "[plugin.oauth.clients.acme-cloud]" in message and '"$env"' in message


def test_plugins_toml_table_with_env_refs_validates(monkeypatch):
    from valetkey.config import validate

    monkeypatch.setenv("ACME_ID", "acme-client")
    monkeypatch.setenv("ACME_SECRET", "acme-secret-value")
    table = {
        "login_timeout": 60,
        "clients": {
            "acme-cloud": {
                "client_id": {"$env": "ACME_ID"},
                "client_secret": {"$env": "ACME_SECRET"},
            }
        },
    }
    config = validate("oauth", OAuthConfig, table, base=None)
    assert config.clients["acme-cloud"] == ClientConfig("acme-client", "acme-secret-value")
    assert config.login_timeout == 60
    assert "acme-secret-value" not in repr(config)
    with pytest.raises(ConfigError, match=r"\[plugin.oauth\]: unknown key 'client'"):
        validate("oauth", OAuthConfig, {"client": {}}, base=None)


# --------------------------------------------------------------------------- flow choice


@pytest.mark.parametrize(
    ("env", "platform", "plausible"),
    [
        ({}, "linux", False),
        ({"DISPLAY": ":0"}, "linux", True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"SSH_CONNECTION": "1 2 3 4"}, "linux", False),
        ({"SSH_CONNECTION": "1 2 3 4", "DISPLAY": "localhost:10"}, "linux", True),
        ({}, "darwin", True),
        ({"SSH_TTY": "/dev/pts/1"}, "darwin", False),
        ({}, "win32", True),
    ],
)
def test_browser_plausible(env, platform, plausible):
    assert browser_plausible(env, platform) is plausible


def test_flow_choice():
    both = connector(device_authorization_url="https://idp.example.test/device")
    headless = OAuthProvider(env={}, platform="linux")
    desktop = OAuthProvider(env={"DISPLAY": ":0"}, platform="linux")
    assert headless.choose_flow(both, {}) == "device"
    assert desktop.choose_flow(both, {}) == "browser"
    assert desktop.choose_flow(both, {"device": True}) == "device"
    assert headless.choose_flow(both, {"device": False}) == "browser"
    assert headless.choose_flow(connector(), {}) == "browser"  # no device URL
    assert desktop.choose_flow(connector(authorize_url=None, device_authorization_url="x"), {}) == (
        "device"
    )
    assert headless.choose_flow(connector(authorize_url=None), {}) == "client_credentials"
    assert headless.choose_flow(both, {"flow": "client_credentials"}) == "client_credentials"


# --------------------------------------------------------------------------- responses


def test_token_response_parsing_and_kept_values_on_refresh():
    now = datetime(2025, 1, 1, tzinfo=UTC)
    conn = connector()
    first = parse_token_response(
        {
            "access_token": "at1",
            "refresh_token": "rt1",
            "id_token": "idt1",
            "expires_in": 3600,
            "scope": "repo,gist",
        },
        connector=conn,
        now=now,
    )
    assert first.scopes == ("repo", "gist") and first.token_type == "Bearer"
    assert first.expires_at == now + timedelta(hours=1)
    again = parse_token_response(
        {"access_token": "at2", "token_type": "bearer", "expires_in": "60"},
        connector=conn,
        now=now,
        previous=first,
    )
    assert again.access_token == "at2"
    assert again.refresh_token == "rt1" and again.id_token == "idt1"  # omitted: kept
    assert again.scopes == ("repo", "gist")
    assert again.expires_at == now + timedelta(seconds=60)
    no_expiry = parse_token_response(
        {"access_token": "at3"}, connector=conn, now=now, requested=("a",)
    )
    assert no_expiry.expires_at is None and no_expiry.scopes == ("a",)
    with pytest.raises(ProviderError, match="carries no access_token"):
        parse_token_response({"token_type": "Bearer"}, connector=conn, now=now)


def _mock_provider(handler) -> OAuthProvider:
    config = OAuthConfig(clients={"acme-cloud": ClientConfig("cid", "client-secret-value")})
    return OAuthProvider(config, env={}, transport=httpx.MockTransport(handler))


async def test_refresh_that_omits_refresh_token_keeps_the_old_one():
    seen: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(parse_qs(request.content.decode()))
        return httpx.Response(200, json={"access_token": "new-at", "expires_in": 60})

    provider = _mock_provider(handler)
    old = Secret(access_token="old-at", refresh_token="keep-me-rt", scopes=("read",))
    fresh = await provider.refresh(connector(), old)
    assert fresh.access_token == "new-at" and fresh.refresh_token == "keep-me-rt"
    assert fresh.scopes == ("read",)
    assert seen[0]["grant_type"] == ["refresh_token"]
    assert seen[0]["client_secret"] == ["client-secret-value"]  # client_auth "post"
    await provider.aclose()


async def test_http_429_and_non_oauth_answers():
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "30"}, text="slow down"),
            httpx.Response(502, text="<html>bad gateway</html>"),
            httpx.Response(200, text="not json"),
        ]
    )
    provider = _mock_provider(lambda request: next(answers))
    old = Secret(access_token="a", refresh_token="r")
    with pytest.raises(RateLimited, match="HTTP 429") as info:
        await provider.refresh(connector(), old)
    assert info.value.retry_after == 30
    with pytest.raises(ProviderError, match=r"the refresh_token request failed: HTTP 502"):
        await provider.refresh(connector(), old)
    with pytest.raises(ProviderError, match=r"not a JSON object"):
        await provider.refresh(connector(), old)
    await provider.aclose()


async def test_unreachable_token_endpoint_is_a_provider_error():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    provider = _mock_provider(handler)
    with pytest.raises(ProviderError, match=r"cannot reach https://idp.example.test/token"):
        await provider.refresh(connector(), Secret(access_token="a", refresh_token="r"))
