"""The HTTP side of OAuth 2.0: requests to a provider's token, device-authorization and
revocation endpoints with httpx, and their answers turned into ``Secret`` values or typed errors.

- Client authentication follows the connector's ``AuthSpec.client_auth``: ``"none"`` (public
  client: ``client_id`` in the form), ``"post"`` (``client_id`` + ``client_secret`` in the form; a
  client with no secret configured is sent as a public one), ``"basic"`` (HTTP Basic with the
  RFC 6749 section 2.3.1 encoding; a secret is required).
- Every request first takes a token from the connector's rate limiter (``ratelimit``): over the
  limit it waits or raises ``RateLimited`` *without sending*.
- A token response becomes a ``Secret``: ``expires_at = now + expires_in``; ``scope`` split on
  spaces (or commas, as GitHub writes it), else the requested scopes; on refresh, a provider that
  omits ``refresh_token`` (or ``id_token`` / ``scope``) keeps the previous value.
- An OAuth error answer becomes ``NeedsReauth`` for ``invalid_grant`` (the grant is dead: the
  owner must connect again) and ``OAuthError`` (an ``Unauthorized`` carrying ``error``) for the
  rest; an HTTP 429 becomes ``RateLimited``; anything else ``ProviderError``. Messages carry the
  provider's ``error`` and ``error_description`` — with every value this request sent (codes,
  verifiers, refresh tokens, client secrets) scrubbed out — and never a token.
- Log lines (logger ``valetkey.oauth``, DEBUG) name the connector, endpoint, grant type and
  status; never a value.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import httpx

from valetkey_hookspecs import (
    ConfigError,
    Connector,
    DeviceAuthorization,
    NeedsReauth,
    RateLimited,
    Secret,
    Unauthorized,
    ValetkeyError,
    utcnow,
)
from valetkey_hookspecs.redaction import redact_text, register_secret

from . import ratelimit
from .config import ClientCredentials, env_prefix, require_secret

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("valetkey.oauth")

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_AGENT = "valetkey-oauth/0.1"
_REDACTED = "[REDACTED]"


class ProviderError(ValetkeyError):
    """The provider could not be reached or answered something that is not OAuth."""

    code = "provider_error"
    http_status = 502


class OAuthError(Unauthorized):
    """An OAuth error answer other than ``invalid_grant`` (RFC 6749 section 5.2, RFC 8628
    section 3.5): ``error`` is the code (``invalid_client``, ``authorization_pending``, ...)."""

    code = "oauth_error"

    def __init__(
        self, message: str, *, error: str, description: str = "", status: int = 400
    ) -> None:
        super().__init__(message)
        self.error = error
        self.description = description
        self.status = status


def _clean(text: Any, limit: int = 300) -> str:
    """A provider-supplied value as one printable line."""
    if not isinstance(text, str):
        return ""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()[:limit]


def scrub(text: str, values: Iterable[str | None]) -> str:
    """``text`` with every one of ``values`` (secrets this request sent) and anything shaped
    like a credential replaced."""
    for value in sorted((v for v in values if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, _REDACTED)
    return redact_text(text)


def _register(secret: Secret) -> Secret:
    """Make every value of ``secret`` show as ``[REDACTED]`` in log lines from now on."""
    for value in secret.values():
        register_secret(value)
    return secret


def _split_scopes(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return tuple(s for s in re.split(r"[\s,]+", value) if s)
    if isinstance(value, list):
        return tuple(str(s) for s in value if s)
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def parse_token_response(
    data: Mapping[str, Any],
    *,
    connector: Connector,
    now: datetime,
    requested: tuple[str, ...] = (),
    previous: Secret | None = None,
) -> Secret:
    """A token endpoint's JSON answer as a ``Secret`` (``previous``: the secret refreshed)."""
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise ProviderError(f"{connector.name}: the token response carries no access_token")
    refresh = data.get("refresh_token")
    id_token = data.get("id_token")
    token_type = data.get("token_type")
    scopes = _split_scopes(data.get("scope"))
    if scopes is None:
        scopes = requested or (previous.scopes if previous else ())
    expires_in = _seconds(data.get("expires_in"))
    return Secret(
        access_token=access,
        refresh_token=refresh
        if isinstance(refresh, str) and refresh
        else (previous.refresh_token if previous else None),
        id_token=id_token
        if isinstance(id_token, str) and id_token
        else (previous.id_token if previous else None),
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        scopes=scopes,
        expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
    )


def parse_device_response(data: Mapping[str, Any], *, connector: Connector) -> DeviceAuthorization:
    """A device authorization endpoint's answer (RFC 8628 section 3.2)."""
    device_code = data.get("device_code")
    user_code = data.get("user_code")
    # "verification_url": what Google sent before RFC 8628 was final
    uri = data.get("verification_uri") or data.get("verification_url")
    if not all(isinstance(v, str) and v for v in (device_code, user_code, uri)):
        raise ProviderError(
            f"{connector.name}: the device authorization response lacks device_code, user_code "
            "or verification_uri"
        )
    complete = data.get("verification_uri_complete")
    expires_in = _seconds(data.get("expires_in"))
    interval = _seconds(data.get("interval"))
    return DeviceAuthorization(
        device_code=str(device_code),
        user_code=str(user_code),
        verification_uri=str(uri),
        expires_in=expires_in if expires_in and expires_in > 0 else 1800.0,
        interval=interval if interval and interval > 0 else 5.0,
        verification_uri_complete=complete if isinstance(complete, str) and complete else None,
    )


class Exchanger:
    """Talks to token endpoints. One ``httpx.AsyncClient`` per event loop, made on first use
    (one TLS context for all); ``aclose()`` closes the current one."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._timeout = timeout
        self._transport = transport
        self._clock = clock
        self._http: httpx.AsyncClient | None = None
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._ssl: ssl.SSLContext | None = None

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if (
            self._http is None
            or self._http.is_closed
            or self._loop is None
            or self._loop() is not loop
        ):
            if self._transport is None and self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            self._http = httpx.AsyncClient(
                timeout=self._timeout,
                transport=self._transport,
                verify=self._ssl if self._ssl is not None else True,
                follow_redirects=False,
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            )
            self._loop = weakref.ref(loop)
        return self._http

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None and not http.is_closed:
            await http.aclose()

    # ------------------------------------------------------------------ the HTTP exchange

    def _authenticate(
        self,
        connector: Connector,
        client: ClientCredentials,
        form: dict[str, str],
        headers: dict[str, str],
    ) -> None:
        method = connector.auth.client_auth
        if method == "none":
            form["client_id"] = client.client_id
        elif method == "post":
            form["client_id"] = client.client_id
            if client.client_secret:
                form["client_secret"] = client.client_secret
        elif method == "basic":
            secret = require_secret(connector.slug, client, "basic")
            pair = f"{quote(client.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            raise ConfigError(
                f"connector {connector.slug!r}: unknown client_auth {method!r} "
                "(expected 'basic', 'post' or 'none')"
            )

    async def _post(
        self,
        connector: Connector,
        client: ClientCredentials,
        url: str | None,
        form: dict[str, str],
        *,
        what: str,
        wait: bool,
        expect_json: bool = True,
    ) -> dict[str, Any]:
        if not url:
            raise ConfigError(f"connector {connector.slug!r} has no URL for the {what}")
        headers: dict[str, str] = {}
        self._authenticate(connector, client, form, headers)
        sent = [*form.values(), client.client_secret]
        register_secret(client.client_secret)
        await ratelimit.acquire(connector, wait=wait)
        try:
            response = await self._client().post(url, data=form, headers=headers)
        except httpx.TimeoutException:
            log.debug("%s: POST %s (%s): timed out", connector.slug, url, what)
            raise ProviderError(
                f"{connector.name}: {url} did not answer the {what} within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            log.debug("%s: POST %s (%s): %s", connector.slug, url, what, type(exc).__name__)
            raise ProviderError(
                f"{connector.name}: cannot reach {url} for the {what} ({type(exc).__name__})"
            ) from None
        log.debug("%s: POST %s (%s) -> HTTP %s", connector.slug, url, what, response.status_code)
        data = self._body(response)
        if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]:
            raise self._error(connector, client, data, response.status_code, what, sent)
        if response.status_code == 429:
            retry = _seconds(response.headers.get("retry-after"))
            raise RateLimited(
                f"{connector.name}: the provider answered HTTP 429 (too many requests) to the "
                f"{what}" + (f"; retry in {retry:g} s" if retry else ""),
                retry_after=retry,
            )
        if response.is_success and not expect_json:
            return data if isinstance(data, dict) else {}
        if not response.is_success or not isinstance(data, dict):
            raise ProviderError(
                f"{connector.name}: the {what} failed: HTTP {response.status_code} from {url}"
                + ("" if isinstance(data, dict) else " (not a JSON object)")
            )
        return data

    @staticmethod
    def _body(response: httpx.Response) -> Any:
        ctype = response.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return dict(parse_qsl(response.text))
        try:
            return response.json()
        except ValueError:
            return None

    def _error(
        self,
        connector: Connector,
        client: ClientCredentials,
        data: Mapping[str, Any],
        status: int,
        what: str,
        sent: Iterable[str | None],
    ) -> ValetkeyError:
        error = _clean(data.get("error"), 80)
        description = scrub(_clean(data.get("error_description")), sent)
        detail = f"{error}: {description}" if description else error
        if error == "invalid_grant":
            return NeedsReauth(
                f"{connector.name}: the grant is no longer valid ({detail}); reconnect with "
                f"'valetkey connect {connector.slug}'"
            )
        hint = ""
        if error in ("invalid_client", "unauthorized_client"):
            prefix = env_prefix(connector.slug)
            hint = (
                f"; check the OAuth client (id from {client.source or 'configuration'}; "
                f"{prefix}CLIENT_ID / {prefix}CLIENT_SECRET or [plugin.oauth.clients."
                f"{connector.slug}])"
            )
        return OAuthError(
            f"{connector.name}: the {what} was refused ({detail}){hint}",
            error=error,
            description=description,
            status=status,
        )

    # ------------------------------------------------------------------ the grants

    async def token(
        self,
        connector: Connector,
        client: ClientCredentials,
        form: dict[str, str],
        *,
        wait: bool,
        requested: tuple[str, ...] = (),
        previous: Secret | None = None,
    ) -> Secret:
        """POST ``form`` to the token endpoint and parse the answer."""
        what = f"{form.get('grant_type', 'token')} request".replace(DEVICE_GRANT, "device_code")
        data = await self._post(
            connector, client, connector.auth.token_url, form, what=what, wait=wait
        )
        return _register(
            parse_token_response(
                data, connector=connector, now=self._clock(), requested=requested, previous=previous
            )
        )

    async def authorization_code(
        self,
        connector: Connector,
        client: ClientCredentials,
        *,
        code: str,
        redirect_uri: str,
        verifier: str | None,
        scopes: tuple[str, ...] = (),
        wait: bool = True,
    ) -> Secret:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if verifier:
            form["code_verifier"] = verifier
        return await self.token(connector, client, form, wait=wait, requested=scopes)

    async def refresh(
        self, connector: Connector, client: ClientCredentials, secret: Secret, *, wait: bool
    ) -> Secret:
        if not secret.refresh_token:
            raise NeedsReauth(
                f"{connector.name}: the credential has no refresh token; reconnect with "
                f"'valetkey connect {connector.slug}'"
            )
        form = {"grant_type": "refresh_token", "refresh_token": secret.refresh_token}
        return await self.token(connector, client, form, wait=wait, previous=secret)

    async def device_code(
        self,
        connector: Connector,
        client: ClientCredentials,
        device_code: str,
        *,
        scopes: tuple[str, ...] = (),
        wait: bool = True,
    ) -> Secret:
        form = {"grant_type": DEVICE_GRANT, "device_code": device_code}
        return await self.token(connector, client, form, wait=wait, requested=scopes)

    async def client_credentials(
        self,
        connector: Connector,
        client: ClientCredentials,
        *,
        scopes: tuple[str, ...] = (),
        wait: bool = False,
    ) -> Secret:
        form = {"grant_type": "client_credentials"}
        if scopes:
            form["scope"] = connector.auth.scope_separator.join(scopes)
        return await self.token(connector, client, form, wait=wait, requested=scopes)

    async def device_authorization(
        self,
        connector: Connector,
        client: ClientCredentials,
        *,
        scopes: tuple[str, ...] = (),
        wait: bool = True,
    ) -> DeviceAuthorization:
        form: dict[str, str] = {}
        if scopes:
            form["scope"] = connector.auth.scope_separator.join(scopes)
        data = await self._post(
            connector,
            client,
            connector.auth.device_authorization_url,
            form,
            what="device authorization request",
            wait=wait,
        )
        device = parse_device_response(data, connector=connector)
        register_secret(device.device_code)
        return device

    async def revoke(
        self,
        connector: Connector,
        client: ClientCredentials,
        token: str,
        *,
        hint: str,
        wait: bool = True,
    ) -> None:
        """RFC 7009: revoke one token (an unknown or already dead token is success)."""
        form = {"token": token, "token_type_hint": hint}
        try:
            await self._post(
                connector,
                client,
                connector.auth.revocation_url,
                form,
                what="revocation request",
                wait=wait,
                expect_json=False,
            )
        except OAuthError as exc:
            if exc.error != "unsupported_token_type":
                raise
