"""Fixtures of the oauth tests: the real authorization server (``tests/fixtures/oidc``), connectors
built from its endpoints, providers configured for its clients, and a scripted browser.

The server fixtures live in the repository's ``tests/fixtures/oidc/oidc_fixture.py`` (shared with
the broker's tests); they are loaded here by path, since the tests run with
``--import-mode=importlib`` and ``tests/`` is not a package on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from valetkey_hookspecs import AuthSpec, AuthType, Connector, RateProfile
from valetkey_oauth import ratelimit
from valetkey_oauth.config import ClientConfig, OAuthConfig
from valetkey_oauth.provider import OAuthProvider


def _load_shared(name: str, relative: str) -> ModuleType:
    module_name = f"valetkey_tests_fixtures_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / relative
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


oidc_fixture = _load_shared("oidc", "oidc/oidc_fixture.py")
oidc_server = oidc_fixture.oidc_server
oidc = oidc_fixture.oidc
OidcServer = oidc_fixture.OidcServer

NATIVE = "idp"  # slug of the connector for the native (public) client
SERVICE = "idp-service"  # slug of the client-credentials connector (client_secret_basic)
SERVICE_POST = "idp-service-post"  # the same with client_secret_post


@pytest.fixture(autouse=True)
def fresh_rate_limits() -> Iterator[None]:
    """Each test starts with empty per-connector buckets (they are per process)."""
    ratelimit.reset()
    yield
    ratelimit.reset()


def _native_connector(
    server: Any, *, slug: str = NATIVE, rate: RateProfile | None = None, **auth: Any
) -> Connector:
    spec: dict[str, Any] = {
        "type": AuthType.OAUTH2,
        "authorize_url": server.authorization_endpoint,
        "token_url": server.token_endpoint,
        "device_authorization_url": server.device_authorization_endpoint,
        "revocation_url": server.revocation_endpoint,
        "scopes": ("openid", "profile"),
        "client_auth": "none",
        **auth,
    }
    return Connector(slug=slug, name="Fixture IdP", auth=AuthSpec(**spec), rate=rate)


def _service_connector(
    server: Any,
    *,
    slug: str = SERVICE,
    client_auth: str = "basic",
    rate: RateProfile | None = None,
) -> Connector:
    return Connector(
        slug=slug,
        name="Fixture API",
        auth=AuthSpec(
            type=AuthType.OAUTH2,
            token_url=server.token_endpoint,
            scopes=("api:read",),
            client_auth=client_auth,
        ),
        rate=rate,
    )


def _config_for(server: Any, **extra: Any) -> OAuthConfig:
    return OAuthConfig(
        clients={
            NATIVE: ClientConfig(client_id=server.native_client_id),
            SERVICE: ClientConfig(
                client_id=server.service_client_id, client_secret=server.service_client_secret
            ),
            SERVICE_POST: ClientConfig(
                client_id=server.service_post_client_id,
                client_secret=server.service_client_secret,
            ),
        },
        **extra,
    )


@pytest.fixture
async def provider(oidc: Any) -> AsyncIterator[OAuthProvider]:
    """A provider for the fixture's clients, on a desktop (a browser is plausible), blind to
    this machine's environment; its HTTP client is closed after the test."""
    provider = OAuthProvider(_config_for(oidc), env={"DISPLAY": ":99"}, platform="linux")
    yield provider
    await provider.aclose()


class Browser:
    """``open_browser`` for ``acquire``: plays the person (log in, consent or deny) against the
    real server, then follows the redirect to the loopback receiver with a real HTTP request.
    The provider runs it in a worker thread."""

    def __init__(
        self, server: Any, *, deny: bool = False, before: Callable[[str], None] | None = None
    ):
        self.server = server
        self.deny = deny
        self.before = before
        self.urls: list[str] = []
        self.callbacks: list[str] = []
        self.pages: list[httpx.Response] = []

    def __call__(self, url: str) -> bool:
        self.urls.append(url)
        if self.before is not None:
            self.before(url)
        if self.deny:
            callback = self.server.deny_authorization(url)
        else:
            callback = self.server.approve_authorization(url)
        self.callbacks.append(callback)
        self.pages.append(httpx.get(callback, timeout=10))
        return True


@pytest.fixture
def browser(oidc: Any) -> Browser:
    return Browser(oidc)


# Helpers as fixtures: with --import-mode=importlib a test module cannot import this conftest.


@pytest.fixture
def oidc_module() -> ModuleType:
    """``tests/fixtures/oidc/oidc_fixture.py`` (``running_oidc_server``, ``DEVICE_GRANT``...)."""
    return oidc_fixture


@pytest.fixture
def native_connector(oidc: Any) -> Callable[..., Connector]:
    """``native_connector(server=oidc, slug="idp", rate=None, **auth)``: the public client's
    connector (authorize, token, device and revocation URLs; ``client_auth="none"``)."""
    return lambda server=None, **kw: _native_connector(server or oidc, **kw)


@pytest.fixture
def service_connector(oidc: Any) -> Callable[..., Connector]:
    """``service_connector(server=oidc, slug="idp-service", client_auth="basic", rate=None)``:
    a client-credentials connector (token URL only)."""
    return lambda server=None, **kw: _service_connector(server or oidc, **kw)


@pytest.fixture
def config_for() -> Callable[..., OAuthConfig]:
    """``config_for(server)``: an ``OAuthConfig`` with the fixture server's clients."""
    return _config_for


@pytest.fixture
def make_browser(oidc: Any) -> Callable[..., Browser]:
    """``make_browser(deny=False, before=None)``: a scripted browser for ``open_browser``."""
    return lambda **kw: Browser(oidc, **kw)


class Lines(list[str]):
    """A ``print`` option that keeps the lines."""

    def __call__(self, line: str) -> None:
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every ``valetkey`` log record at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="valetkey")
    return caplog
