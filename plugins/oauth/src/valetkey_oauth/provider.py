"""``OAuthProvider``: the ``oauth2`` credential provider and the OAuth 2.0 flows behind it.

It implements both contracts of ``valetkey_hookspecs``:

- ``CredentialProvider`` — ``acquire(request)`` runs a whole sign-in (browser + PKCE over a
  loopback redirect, the device grant, or client credentials) and ``refresh(connector, secret)``;
- ``OAuthFlows`` — the building blocks, for callers that own the redirect or the display (the
  broker's REST API, the CLI): ``authorization_request``, ``exchange_code``, ``start_device``,
  ``poll_device``, ``client_credentials``; plus ``revoke`` (RFC 7009).

``acquire`` reads these ``request.options`` (all optional):

==================  ============================================================================
``flow``            ``"browser"``, ``"device"`` or ``"client_credentials"``: no guessing
``device``          True: the device flow; False: the browser flow
``no_browser``      True: print the authorization URL, do not open a browser
``open_browser``    ``callable(url) -> bool | None`` used instead of ``webbrowser.open`` (run in a
                    worker thread; a false result or an exception is reported, and the printed
                    URL still works)
``print``           ``callable(line)`` for lines meant for the person (default: stderr)
``on_device``       ``callable(DeviceAuthorization)`` once the user code is known
``timeout``         seconds to wait for the browser to come back (default: ``login_timeout``)
==================  ============================================================================

Without ``flow`` / ``device``: a connector with neither an authorize nor a device URL uses client
credentials; one with only one of them uses that one; one with both uses the browser when a
browser is plausible here (macOS and Windows, or ``DISPLAY`` / ``WAYLAND_DISPLAY`` set, and not an
SSH session without a forwarded display), else the device flow.

Rate limits: ``refresh`` and ``client_credentials`` fail fast (``RateLimited``, nothing sent)
unless called with ``wait=True``; the interactive steps (code exchange, device authorization and
polling) wait for their turn — a person is waiting on them, and a poll may always come later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import webbrowser
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from valetkey_hookspecs import (
    AcquireRequest,
    AuthorizationRequest,
    AuthType,
    ConfigError,
    Connector,
    DeviceAuthorization,
    InvalidInput,
    NeedsReauth,
    Secret,
    Unauthorized,
    utcnow,
)
from valetkey_hookspecs.redaction import register_secret

from . import pkce
from .config import ClientCredentials, OAuthConfig, resolve_client
from .exchanger import Exchanger, OAuthError
from .loopback import LoopbackReceiver
from .progress import print_stderr, stderr_is_terminal, waiting_line

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("valetkey.oauth")

#: added to the polling interval on each ``slow_down`` (RFC 8628 section 3.5)
SLOW_DOWN_STEP = 5.0
#: the shortest polling interval used, whatever the provider says
MIN_INTERVAL = 1.0
#: authorization parameters ``extra_authorize_params`` may not override
_PROTECTED = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "scope",
        "code_challenge",
        "code_challenge_method",
    }
)


def browser_plausible(env: Mapping[str, str], platform: str) -> bool:
    """Whether a browser opened here would be in front of the person running the command."""
    display = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    if (env.get("SSH_CONNECTION") or env.get("SSH_TTY")) and not display:
        return False
    if platform == "darwin" or platform.startswith(("win", "cygwin")):
        return True
    return display


class OAuthProvider:
    """The ``oauth2`` credential provider (``CredentialProvider`` and ``OAuthFlows``)."""

    name = "oauth2"
    auth_types: tuple[AuthType, ...] = (AuthType.OAUTH2,)

    def __init__(
        self,
        config: OAuthConfig | None = None,
        *,
        env: Mapping[str, str] | None = None,
        platform: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config or OAuthConfig()
        self._env = env
        self._platform = platform or sys.platform
        self._sleep = sleep
        self._exchanger = Exchanger(
            timeout=self.config.http_timeout, transport=transport, clock=clock
        )

    def __repr__(self) -> str:
        return f"OAuthProvider(clients={sorted(self.config.clients)})"

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    def client_for(self, connector: Connector) -> ClientCredentials:
        """The connector's OAuth client (``ConfigError`` naming both ways to set it)."""
        return resolve_client(connector.slug, self.config, self.environ)

    async def aclose(self) -> None:
        """Close the HTTP client (the provider stays usable: a new one is made on next use)."""
        await self._exchanger.aclose()

    @staticmethod
    def _check(connector: Connector) -> None:
        if connector.auth.type != AuthType.OAUTH2:
            raise InvalidInput(
                f"connector {connector.slug!r} uses {connector.auth.type.value} authentication, "
                "not OAuth 2.0"
            )

    @staticmethod
    def _scopes(connector: Connector, scopes: Sequence[str]) -> tuple[str, ...]:
        return tuple(scopes) or tuple(connector.auth.scopes)

    # ------------------------------------------------------------------ OAuthFlows

    def authorization_request(
        self, connector: Connector, redirect_uri: str, scopes: Sequence[str] = ()
    ) -> AuthorizationRequest:
        """A PKCE (S256) authorization URL with a fresh state."""
        self._check(connector)
        spec = connector.auth
        if not spec.authorize_url:
            raise InvalidInput(
                f"connector {connector.slug!r} has no authorize URL: it cannot use the "
                "authorization-code flow"
            )
        client = self.client_for(connector)
        wanted = self._scopes(connector, scopes)
        state = pkce.new_state()
        verifier = pkce.new_verifier() if spec.pkce else None
        register_secret(verifier)
        params = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
        }
        if wanted:
            params["scope"] = connector.auth.scope_separator.join(wanted)
        if verifier is not None:
            params["code_challenge"] = pkce.challenge(verifier)
            params["code_challenge_method"] = pkce.CHALLENGE_METHOD
        for key, value in spec.extra_authorize_params.items():
            if key not in _PROTECTED:
                params[key] = value
        sep = "&" if "?" in spec.authorize_url else "?"
        url = spec.authorize_url + sep + urlencode(params, quote_via=quote)
        return AuthorizationRequest(
            url=url, state=state, verifier=verifier, redirect_uri=redirect_uri, scopes=wanted
        )

    async def exchange_code(
        self,
        connector: Connector,
        request: AuthorizationRequest,
        code: str,
        *,
        wait: bool = True,
    ) -> Secret:
        """Exchange an authorization code (after the caller checked the state)."""
        self._check(connector)
        register_secret(code)
        return await self._exchanger.authorization_code(
            connector,
            self.client_for(connector),
            code=code,
            redirect_uri=request.redirect_uri,
            verifier=request.verifier,
            scopes=request.scopes,
            wait=wait,
        )

    async def start_device(
        self, connector: Connector, scopes: Sequence[str] = (), *, wait: bool = True
    ) -> DeviceAuthorization:
        """Start a device authorization (RFC 8628)."""
        self._check(connector)
        if not connector.auth.device_authorization_url:
            raise InvalidInput(
                f"connector {connector.slug!r} has no device authorization URL: sign in with "
                "the browser flow instead"
            )
        return await self._exchanger.device_authorization(
            connector,
            self.client_for(connector),
            scopes=self._scopes(connector, scopes),
            wait=wait,
        )

    async def poll_device(
        self,
        connector: Connector,
        device: DeviceAuthorization,
        on_wait: Callable[[float], None] | None = None,
    ) -> Secret:
        """Poll until approved: ``authorization_pending`` waits, ``slow_down`` adds 5 s,
        ``expired_token`` / ``access_denied`` raise ``Unauthorized``. ``on_wait(seconds_left)``
        is called before each wait."""
        self._check(connector)
        client = self.client_for(connector)
        again = f"run 'valetkey connect {connector.slug} --device' again"
        interval = max(float(device.interval), MIN_INTERVAL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(device.expires_in)
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise Unauthorized(
                    f"the device code for {connector.name} expired before the sign-in was "
                    f"approved: {again}"
                )
            if on_wait is not None:
                on_wait(left)
            await self._sleep(min(interval, left))
            try:
                return await self._exchanger.device_code(
                    connector, client, device.device_code, wait=True
                )
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                    log.debug("%s: slow_down: polling every %g s", connector.slug, interval)
                    continue
                if exc.error == "expired_token":
                    raise Unauthorized(
                        f"the device code for {connector.name} expired before the sign-in "
                        f"was approved (expired_token): {again}"
                    ) from None
                if exc.error == "access_denied":
                    raise Unauthorized(
                        f"the sign-in to {connector.name} was denied on the verification page "
                        f"(access_denied): {again} to try again"
                    ) from None
                raise
            except NeedsReauth:
                raise Unauthorized(
                    f"the device code for {connector.name} is no longer valid (invalid_grant): "
                    f"{again}"
                ) from None

    async def client_credentials(
        self, connector: Connector, scopes: Sequence[str] = (), *, wait: bool = False
    ) -> Secret:
        """A token for the client itself (RFC 6749 section 4.4)."""
        self._check(connector)
        return await self._exchanger.client_credentials(
            connector,
            self.client_for(connector),
            scopes=self._scopes(connector, scopes),
            wait=wait,
        )

    # ------------------------------------------------------------------ CredentialProvider

    async def refresh(self, connector: Connector, secret: Secret, *, wait: bool = False) -> Secret:
        """A fresh secret; ``NeedsReauth`` when the grant is dead. A client-credentials connector
        (no authorize nor device URL) gets a new client-credentials token instead."""
        self._check(connector)
        spec = connector.auth
        if not secret.refresh_token and not (spec.authorize_url or spec.device_authorization_url):
            return await self.client_credentials(connector, secret.scopes, wait=wait)
        return await self._exchanger.refresh(
            connector, self.client_for(connector), secret, wait=wait
        )

    async def revoke(self, connector: Connector, secret: Secret) -> bool:
        """Revoke the refresh and access tokens at the provider (RFC 7009); False when the
        connector has no revocation URL (nothing sent)."""
        self._check(connector)
        if not connector.auth.revocation_url:
            return False
        client = self.client_for(connector)
        if secret.refresh_token:
            await self._exchanger.revoke(
                connector, client, secret.refresh_token, hint="refresh_token"
            )
        if secret.access_token:
            await self._exchanger.revoke(
                connector, client, secret.access_token, hint="access_token"
            )
        return True

    def choose_flow(self, connector: Connector, options: Mapping[str, Any]) -> str:
        """``"browser"``, ``"device"`` or ``"client_credentials"`` for this connector and
        these options (see the module docstring)."""
        spec = connector.auth
        flow = options.get("flow")
        if flow is not None:
            if flow not in ("browser", "device", "client_credentials"):
                raise InvalidInput(
                    f"unknown OAuth flow {flow!r} (expected browser, device or client_credentials)"
                )
            return str(flow)
        if not spec.authorize_url and not spec.device_authorization_url:
            if not spec.token_url:
                raise ConfigError(f"connector {connector.slug!r} has no OAuth endpoints")
            return "client_credentials"
        device = options.get("device")
        if device is True:
            return "device"
        if device is False or not spec.device_authorization_url:
            return "browser"
        if not spec.authorize_url:
            return "device"
        return "browser" if browser_plausible(self.environ, self._platform) else "device"

    async def acquire(self, request: AcquireRequest) -> Secret:
        """Run the flow (browser, device code or client credentials) and return the secret."""
        connector = request.connector
        self._check(connector)
        options = request.options
        scopes = self._scopes(connector, request.scopes)
        flow = self.choose_flow(connector, options)
        if flow == "client_credentials":
            return await self.client_credentials(connector, scopes, wait=True)
        if not request.interactive:
            raise InvalidInput(
                f"connecting {connector.name} needs a person to sign in; run "
                f"'valetkey connect {connector.slug}' from a terminal"
            )
        say: Callable[[str], None] | None = options.get("print")
        if say is None:
            say = print_stderr
        if flow == "device":
            return await self._device_login(connector, scopes, options, say)
        return await self._browser_login(connector, scopes, options, say)

    async def _browser_login(
        self,
        connector: Connector,
        scopes: tuple[str, ...],
        options: Mapping[str, Any],
        say: Callable[[str], None],
    ) -> Secret:
        timeout = float(options.get("timeout") or self.config.login_timeout)
        opener: Callable[[str], Any] | None = options.get("open_browser")
        if opener is None and self.config.open_browser and not options.get("no_browser"):
            opener = webbrowser.open
        if options.get("no_browser"):
            opener = None
        async with LoopbackReceiver(connector.name, on_reject=say) as receiver:
            request = self.authorization_request(connector, receiver.redirect_uri, scopes)
            receiver.expect(request.state)
            if opener is not None:
                say(f"Opening your browser to sign in to {connector.name}. If it does not open,")
                say(f"open this URL in a browser on this machine:\n\n  {request.url}\n")
            else:
                say(f"To sign in to {connector.name}, open this URL in a browser on this machine:")
                say(f"\n  {request.url}\n")
            browser = (
                asyncio.ensure_future(asyncio.to_thread(opener, request.url))
                if opener is not None
                else None
            )
            waiting = asyncio.ensure_future(receiver.wait(timeout))
            try:
                if browser is not None:
                    await asyncio.wait({browser, waiting}, return_when=asyncio.FIRST_COMPLETED)
                    if browser.done():
                        self._report_browser(browser, say)
                with waiting_line(f"Waiting for the sign-in to {connector.name} in the browser"):
                    callback = await waiting
            finally:
                if not waiting.done():
                    waiting.cancel()
                    with contextlib.suppress(BaseException):
                        await waiting
                if browser is not None and not browser.done():
                    # let a browser helper that is still talking to us finish (briefly)
                    await asyncio.wait({browser}, timeout=5)
                if browser is not None and browser.done():
                    self._report_browser(browser, None)
        secret = await self.exchange_code(connector, request, callback.code)
        say(f"Signed in to {connector.name}.")
        return secret

    @staticmethod
    def _report_browser(task: asyncio.Future[Any], say: Callable[[str], None] | None) -> None:
        """Tell the person when the browser could not be opened (the URL is printed)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.debug("opening the browser failed: %s", type(exc).__name__)
            if say is not None:
                say(f"Could not open a browser ({type(exc).__name__}): open the URL above.")
        elif task.result() is False and say is not None:
            say("Could not open a browser: open the URL above.")

    async def _device_login(
        self,
        connector: Connector,
        scopes: tuple[str, ...],
        options: Mapping[str, Any],
        say: Callable[[str], None],
    ) -> Secret:
        device = await self.start_device(connector, scopes)
        say(
            f"To sign in to {connector.name}, open {device.verification_uri} in any browser "
            f"and enter the code:\n\n    {device.user_code}\n"
        )
        if device.verification_uri_complete:
            say(f"(or open {device.verification_uri_complete} to have the code filled in)")
        on_device = options.get("on_device")
        if on_device is not None:
            on_device(device)
        with waiting_line(
            f"Waiting for the code {device.user_code} to be approved",
            enabled=stderr_is_terminal(),
        ) as update:
            secret = await self.poll_device(connector, device, on_wait=update)
        say(f"Signed in to {connector.name}.")
        return secret
