"""The OAuth flows end to end against a real authorization server (npm oidc-provider, started by
the shared fixture in tests/fixtures/oidc): PKCE over the loopback redirect, the device grant,
refresh with rotation, client credentials, revocation, rate limits, and no token anywhere it
must not be."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from valetkey_hookspecs import (
    AcquireRequest,
    ConfigError,
    CredentialProvider,
    InvalidInput,
    NeedsReauth,
    OAuthFlows,
    RateLimited,
    RateProfile,
    Secret,
    Unauthorized,
    utcnow,
)
from valetkey_oauth.config import ClientConfig
from valetkey_oauth.exchanger import OAuthError
from valetkey_oauth.provider import OAuthProvider

pytestmark = pytest.mark.anyio

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SERVICE, SERVICE_POST = "idp-service", "idp-service-post"


async def test_provider_implements_both_contracts(provider):
    assert isinstance(provider, CredentialProvider)
    assert isinstance(provider, OAuthFlows)
    assert provider.name == "oauth2" and [t.value for t in provider.auth_types] == ["oauth2"]


# --------------------------------------------------------------------------- browser + PKCE


async def test_pkce_loopback_sign_in_end_to_end(oidc, provider, native_connector, browser, lines):
    before = utcnow()
    secret = await provider.acquire(
        AcquireRequest(
            owner="ann",
            connector=native_connector(),
            options={"open_browser": browser, "print": lines},
        )
    )
    assert secret.access_token and secret.refresh_token and secret.id_token
    assert secret.token_type == "Bearer" and secret.scopes == ("openid", "profile")
    assert before + timedelta(seconds=295) < secret.expires_at < utcnow() + timedelta(seconds=301)
    # the authorization URL: PKCE S256, a loopback redirect on a random port; and it was printed
    url = browser.urls[0]
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", query["redirect_uri"])
    assert len(query["state"]) == 43
    assert url in lines.text
    # the browser came back through a real HTTP request to the receiver
    assert browser.callbacks[0].startswith(query["redirect_uri"] + "?code=")
    page = browser.pages[0]
    assert page.status_code == 200 and "You can close this tab" in page.text
    assert parse_qs(urlsplit(browser.callbacks[0]).query)["code"][0] not in page.text
    assert oidc.counts()["token"] == {"authorization_code": 1}
    assert lines[-1] == "Signed in to Fixture IdP."
    # the access token works at the provider
    userinfo = httpx.get(
        oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {secret.access_token}"}
    )
    assert userinfo.json()["sub"] == "alice"


async def test_no_browser_prints_the_url_for_copy_paste(oidc, provider, native_connector, lines):
    printed = asyncio.Event()

    def say(line: str) -> None:
        lines(line)
        if oidc.authorization_endpoint in line:
            printed.set()

    async def person_copies_the_url() -> None:
        await printed.wait()
        url = re.search(r"(http://\S+/auth\?\S+)", lines.text).group(1)
        callback = await asyncio.to_thread(oidc.approve_authorization, url)
        async with httpx.AsyncClient() as client:
            await client.get(callback)

    person = asyncio.ensure_future(person_copies_the_url())
    secret = await provider.acquire(
        AcquireRequest(
            owner="ann",
            connector=native_connector(),
            options={"no_browser": True, "print": say, "timeout": 20},
        )
    )
    await person
    assert secret.access_token
    assert "open this URL in a browser on this machine" in lines.text
    assert "Opening your browser" not in lines.text


async def test_access_denied_on_the_loopback_is_a_clear_error(
    oidc, provider, native_connector, make_browser, lines
):
    browser = make_browser(deny=True)
    with pytest.raises(Unauthorized) as info:
        await provider.acquire(
            AcquireRequest(
                owner="ann",
                connector=native_connector(),
                options={"open_browser": browser, "print": lines},
            )
        )
    assert str(info.value) == (
        "sign-in to Fixture IdP was not authorized (access_denied: End-User aborted interaction)"
    )
    assert "Sign-in failed" in browser.pages[0].text
    assert oidc.token_requests() == 0


async def test_forged_callback_is_rejected_and_the_real_one_still_signs_in(
    oidc, provider, native_connector, make_browser, lines
):
    """Decision: a callback with a wrong state never ends the sign-in (any page the person has
    open could send one); it is rejected with a 400 page and a line in the terminal, and the
    genuine callback that follows completes the sign-in."""
    forged: list[httpx.Response] = []

    def attacker_first(url: str) -> None:
        redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        forged.append(httpx.get(f"{redirect}?code=attacker-code&state=attacker-state"))

    browser = make_browser(before=attacker_first)
    secret = await provider.acquire(
        AcquireRequest(
            owner="ann",
            connector=native_connector(),
            options={"open_browser": browser, "print": lines},
        )
    )
    assert secret.access_token
    assert forged[0].status_code == 400 and "state mismatch" in forged[0].text
    assert "Ignored a sign-in callback that does not belong to this sign-in" in lines.text
    assert oidc.counts()["token"] == {"authorization_code": 1}  # only the genuine code


async def test_a_browser_that_cannot_open_is_reported_and_the_url_still_works(
    oidc, provider, native_connector, lines
):
    told = asyncio.Event()

    def say(line: str) -> None:
        lines(line)
        if line.startswith("Could not open a browser"):
            told.set()

    def broken_browser(url: str) -> bool:
        raise OSError("no runnable browser found")

    async def person_copies_the_url() -> None:
        await told.wait()
        url = re.search(r"(http://\S+/auth\?\S+)", lines.text).group(1)
        callback = await asyncio.to_thread(oidc.approve_authorization, url)
        async with httpx.AsyncClient() as client:
            await client.get(callback)

    person = asyncio.ensure_future(person_copies_the_url())
    secret = await provider.acquire(
        AcquireRequest(
            owner="ann",
            connector=native_connector(),
            options={"open_browser": broken_browser, "print": say, "timeout": 20},
        )
    )
    await person
    assert secret.access_token
    assert "Could not open a browser (OSError): open the URL above." in lines


async def test_non_interactive_acquire_of_a_sign_in_flow_is_refused(
    oidc, provider, native_connector
):
    with pytest.raises(
        InvalidInput, match=r"needs a person to sign in; run 'valetkey connect idp'"
    ):
        await provider.acquire(
            AcquireRequest(owner="ann", connector=native_connector(), interactive=False)
        )
    assert oidc.token_requests() == 0


# --------------------------------------------------------------------------- device grant


async def test_device_flow_end_to_end(oidc, provider, native_connector):
    connector = native_connector()
    device = await provider.start_device(connector)
    assert device.interval == 1 and device.expires_in == 120
    assert device.verification_uri == f"{oidc.issuer}/device"
    assert device.device_code not in repr(device)
    waits: list[float] = []

    async def person_approves_later() -> None:
        await asyncio.sleep(1.5)  # at least one poll sees authorization_pending first
        await asyncio.to_thread(oidc.approve_device, device.user_code)

    person = asyncio.ensure_future(person_approves_later())
    secret = await provider.poll_device(connector, device, on_wait=waits.append)
    await person
    assert secret.access_token and secret.refresh_token
    polls = oidc.counts()["token"][DEVICE_GRANT]
    assert polls >= 2 and len(waits) == polls  # one on_wait before each poll
    assert waits == sorted(waits, reverse=True) and 0 < waits[-1] < waits[0] <= 120


async def test_device_flow_through_acquire_prints_the_code_and_url(
    oidc, config_for, native_connector, lines
):
    provider = OAuthProvider(config_for(oidc), env={}, platform="linux")  # no display: device
    approvals: list[asyncio.Future[None]] = []

    def on_device(device) -> None:
        approvals.append(
            asyncio.ensure_future(asyncio.to_thread(oidc.approve_device, device.user_code))
        )

    secret = await provider.acquire(
        AcquireRequest(
            owner="ann",
            connector=native_connector(),
            options={"print": lines, "on_device": on_device},
        )
    )
    await approvals[0]
    assert secret.access_token
    user_code = re.search(r"enter the code:\s+(\S+)", lines.text).group(1)
    assert f"open {oidc.issuer}/device in any browser" in lines.text
    assert f"{oidc.issuer}/device?user_code={user_code}" in lines.text
    assert lines[-1] == "Signed in to Fixture IdP."
    assert oidc.counts()["device_authorization"] == 1


async def test_device_slow_down_adds_five_seconds(oidc, config_for, native_connector):
    asked: list[float] = []

    async def impatient_sleep(seconds: float) -> None:
        asked.append(seconds)
        # the first poll goes out at once (too fast: the server answers slow_down); later ones
        # wait just past the server's interval rather than the whole 6 s
        await asyncio.sleep(0 if len(asked) == 1 else 1.1)

    provider = OAuthProvider(config_for(oidc), env={}, sleep=impatient_sleep)
    connector = native_connector()
    device = await provider.start_device(connector)
    approval = asyncio.ensure_future(asyncio.to_thread(oidc.approve_device, device.user_code))
    secret = await provider.poll_device(connector, device)
    await approval
    assert secret.access_token
    assert asked[0] == 1.0 and asked[1:] and set(asked[1:]) == {6.0}


async def test_device_access_denied(oidc, provider, native_connector):
    connector = native_connector()
    device = await provider.start_device(connector)
    await asyncio.to_thread(oidc.deny_device, device.user_code)
    with pytest.raises(
        Unauthorized,
        match=r"denied on the verification page \(access_denied\): "
        r"run 'valetkey connect idp --device' again",
    ):
        await provider.poll_device(connector, device)


async def test_device_expired_token(oidc, oidc_module, config_for, native_connector, tmp_path):
    with oidc_module.running_oidc_server(tmp_path, device_ttl=1) as short_lived:
        provider = OAuthProvider(config_for(short_lived), env={})
        connector = native_connector(short_lived)
        device = await provider.start_device(connector)
        assert device.expires_in == 1
        # believe the code lives longer than it does: the server answers expired_token
        device = replace(device, expires_in=30.0, interval=1.5)
        with pytest.raises(
            Unauthorized, match=r"expired before the sign-in was approved \(expired_token\)"
        ):
            await provider.poll_device(connector, device)


async def test_device_code_lifetime_is_enforced_locally_too(oidc, provider, native_connector):
    connector = native_connector()
    device = replace(await provider.start_device(connector), expires_in=0.5)
    with pytest.raises(Unauthorized, match=r"expired before the sign-in was approved: run"):
        await provider.poll_device(connector, device)


# --------------------------------------------------------------------------- refresh


async def _signed_in(oidc, provider, connector) -> Secret:
    request = provider.authorization_request(connector, "http://127.0.0.1:9/callback")
    callback = await asyncio.to_thread(oidc.approve_authorization, request.url)
    query = parse_qs(urlsplit(callback).query)
    assert query["state"] == [request.state]
    return await provider.exchange_code(connector, request, query["code"][0])


async def test_refresh_rotates_and_the_old_refresh_token_is_dead(oidc, provider, native_connector):
    connector = native_connector()
    first = await _signed_in(oidc, provider, connector)
    second = await provider.refresh(connector, first)
    assert second.access_token != first.access_token
    assert second.refresh_token and second.refresh_token != first.refresh_token
    assert second.scopes == ("openid", "profile")
    with pytest.raises(NeedsReauth) as info:
        await provider.refresh(connector, first)
    assert str(info.value) == (
        "Fixture IdP: the grant is no longer valid (invalid_grant: grant request is invalid); "
        "reconnect with 'valetkey connect idp'"
    )
    assert oidc.counts()["token"] == {"authorization_code": 1, "refresh_token": 2}


async def test_revoke_kills_the_grant(oidc, provider, native_connector):
    connector = native_connector()
    secret = await _signed_in(oidc, provider, connector)
    assert await provider.revoke(connector, secret) is True
    assert oidc.counts()["revocation"] == 2
    with pytest.raises(NeedsReauth):
        await provider.refresh(connector, secret)


async def test_a_secret_without_refresh_token_needs_reauth(oidc, provider, native_connector):
    with pytest.raises(NeedsReauth, match="has no refresh token; reconnect with"):
        await provider.refresh(native_connector(), Secret(access_token="only-access"))
    assert oidc.token_requests() == 0


# --------------------------------------------------------------------------- client credentials


@pytest.mark.parametrize(("slug", "client_auth"), [(SERVICE, "basic"), (SERVICE_POST, "post")])
async def test_client_credentials(oidc, provider, service_connector, slug, client_auth):
    connector = service_connector(slug=slug, client_auth=client_auth)
    secret = await provider.client_credentials(connector)
    assert secret.access_token and secret.refresh_token is None
    assert secret.scopes == ("api:read",)
    introspection = httpx.post(
        oidc.introspection_endpoint,
        data={"token": secret.access_token},
        auth=(oidc.service_client_id, oidc.service_client_secret),
    ).json()
    assert introspection["active"] is True
    assert introspection["client_id"] == (
        oidc.service_client_id if slug == SERVICE else oidc.service_post_client_id
    )
    # acquire picks client credentials for a connector with only a token URL; refresh renews
    acquired = await provider.acquire(AcquireRequest(owner="svc", connector=connector))
    renewed = await provider.refresh(connector, acquired)
    assert len({secret.access_token, acquired.access_token, renewed.access_token}) == 3
    assert oidc.counts()["token"] == {"client_credentials": 3}


async def test_a_wrong_client_secret_is_refused_with_a_hint_and_no_secret(
    oidc, config_for, service_connector
):
    wrong = "wrong-secret-value-123"
    config = config_for(oidc)
    config.clients[SERVICE] = ClientConfig(oidc.service_client_id, wrong)
    provider = OAuthProvider(config, env={})
    with pytest.raises(OAuthError) as info:
        await provider.client_credentials(service_connector())
    message = str(info.value)
    assert info.value.error == "invalid_client"
    assert message.startswith(
        "Fixture API: the client_credentials request was refused (invalid_client"
    )
    assert "VALETKEY_OAUTH_IDP_SERVICE_CLIENT_ID" in message
    assert wrong not in message and oidc.service_client_secret not in message


async def test_basic_client_auth_without_a_secret_is_a_config_error(
    oidc, config_for, service_connector
):
    provider = OAuthProvider(
        config_for(oidc), env={"VALETKEY_OAUTH_IDP_SERVICE_CLIENT_ID": "from-env"}
    )
    with pytest.raises(
        ConfigError,
        match=r"'basic' but no client secret is set .*VALETKEY_OAUTH_IDP_SERVICE_CLIENT_SECRET",
    ):
        await provider.client_credentials(service_connector())
    assert oidc.token_requests() == 0


async def test_missing_client_id_is_a_config_error_naming_both_ways(oidc, native_connector):
    provider = OAuthProvider(env={})
    with pytest.raises(ConfigError) as info:
        await provider.start_device(native_connector())
    assert "VALETKEY_OAUTH_IDP_CLIENT_ID" in str(info.value)
    assert "[plugin.oauth.clients.idp]" in str(info.value)
    assert oidc.counts()["device_authorization"] == 0


# --------------------------------------------------------------------------- rate limits


async def test_rate_profile_5_per_minute_the_6th_refresh_sends_nothing(
    oidc, provider, native_connector
):
    secret = await _signed_in(oidc, provider, native_connector())  # no rate profile here
    limited = native_connector(rate=RateProfile(requests=5, per_seconds=60))
    for _ in range(5):
        secret = await provider.refresh(limited, secret)
    assert oidc.counts()["token"]["refresh_token"] == 5
    with pytest.raises(RateLimited, match=r"5 requests per 60 s\): nothing was sent") as info:
        await provider.refresh(limited, secret)
    assert 0 < info.value.retry_after <= 12
    assert oidc.counts()["token"] == {"authorization_code": 1, "refresh_token": 5}
    # the refusal did not spend the refresh token: it still works without the limit
    assert (await provider.refresh(native_connector(), secret)).access_token


async def test_rate_profile_waits_when_asked(oidc, provider, service_connector):
    limited = service_connector(rate=RateProfile(requests=2, per_seconds=1))
    start = time.monotonic()
    for _ in range(3):
        await provider.client_credentials(limited, wait=True)
    assert time.monotonic() - start >= 0.45
    assert oidc.token_requests("client_credentials") == 3


# --------------------------------------------------------------------------- no secret leaks


async def test_no_token_in_exception_text_or_logs(
    oidc, provider, config_for, native_connector, service_connector, browser, lines, debug_log
):
    connector = native_connector()
    secret = await provider.acquire(
        AcquireRequest(
            owner="ann", connector=connector, options={"open_browser": browser, "print": lines}
        )
    )
    values = [*secret.values(), parse_qs(urlsplit(browser.callbacks[0]).query)["code"][0]]
    rotated = await provider.refresh(connector, secret)
    limited = native_connector(rate=RateProfile(1, 60))
    rotated_again = await provider.refresh(limited, rotated)
    values += [*rotated.values(), *rotated_again.values()]
    errors: list[Exception] = []
    for attempt in (
        lambda: provider.refresh(connector, secret),  # a rotated-out token: invalid_grant
        lambda: provider.refresh(limited, rotated_again),  # over the rate profile
    ):
        with pytest.raises((NeedsReauth, RateLimited)) as info:
            await attempt()
        errors.append(info.value)
    wrong = "a-wrong-client-secret-value"
    bad = OAuthProvider(
        config_for(oidc),
        env={
            "VALETKEY_OAUTH_IDP_SERVICE_CLIENT_ID": oidc.service_client_id,
            "VALETKEY_OAUTH_IDP_SERVICE_CLIENT_SECRET": wrong,
        },
    )
    with pytest.raises(OAuthError) as info:
        await bad.client_credentials(service_connector())
    errors.append(info.value)
    values += [wrong, oidc.service_client_secret]
    device = await provider.start_device(connector)
    values.append(device.device_code)

    assert [type(e).__name__ for e in errors] == ["NeedsReauth", "RateLimited", "OAuthError"]
    assert any(r.levelname == "DEBUG" and r.name == "valetkey.oauth" for r in debug_log.records)
    texts = [debug_log.text, lines.text, *(str(e) for e in errors), *(repr(e) for e in errors)]
    texts += [repr(secret), str(rotated), repr(device), repr(provider), repr(bad.config)]
    for value in values:
        assert len(value) >= 20
        for text in texts:
            assert value not in text
