"""Ways back in for a connection that needs re-authorization: an authorization-code link served
through ``/api/oauth/callback`` (when ``public_url`` is set), and a device code the person can
enter anywhere, whose completion the broker awaits in the background and stores.

Used by the REST API (``POST /api/connections/{id}/oauth/start``) and by the re-auth
notification, so the webhook a person receives carries a link or a code, not only a command.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from valetkey_hookspecs import (
    AuthType,
    Connection,
    Connector,
    DeviceAuthorization,
    InvalidInput,
    KernelAPI,
    OAuthFlows,
    TransientRecord,
    utcnow,
)

from .config import BrokerConfig
from .ids import hash_token

OAUTH_STATE = "oauth-state"
OAUTH_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class StartedLogin:
    """An authorization-code login waiting for the person: send them to ``url``."""

    url: str
    expires_at: datetime


def flows(kernel: KernelAPI) -> OAuthFlows:
    """The OAuth building blocks of the ``oauth2`` credential provider."""
    provider: Any = kernel.credential_provider("oauth2")
    if not isinstance(provider, OAuthFlows):
        raise InvalidInput("the installed oauth2 credential provider offers no OAuth flows")
    return provider


async def start_authorization(
    kernel: KernelAPI,
    config: BrokerConfig,
    conn: Connection,
    connector: Connector,
    *,
    return_to: str | None = None,
    scopes: Sequence[str] = (),
) -> StartedLogin:
    """A single-use (10 minutes) authorization-code login for ``conn``; the state is stored
    hashed and the PKCE verifier sealed."""
    if connector.auth.type is not AuthType.OAUTH2 or not connector.auth.authorize_url:
        raise InvalidInput(f"{connector.slug} has no authorization-code flow")
    if return_to is not None and return_to not in config.oauth_return_urls:
        raise InvalidInput("return_to is not in [plugin.broker] oauth_return_urls (exact match)")
    if not config.public_url:
        raise InvalidInput("set [plugin.broker] public_url so providers can reach the callback")
    redirect_uri = config.public_url.rstrip("/") + "/api/oauth/callback"
    auth = flows(kernel).authorization_request(connector, redirect_uri, scopes)
    sealed = kernel.sealer.seal(
        json.dumps({"verifier": auth.verifier}).encode(), f"{OAUTH_STATE}:{auth.state}".encode()
    )
    expires = utcnow() + OAUTH_TTL
    await kernel.store.transient.put(
        TransientRecord(
            kind=OAUTH_STATE,
            key=hash_token(auth.state),
            expires_at=expires,
            owner=conn.owner,
            data={
                "connection_id": conn.id,
                "redirect_uri": redirect_uri,
                "return_to": return_to,
                "scopes": list(auth.scopes),
            },
            sealed=sealed,
        )
    )
    return StartedLogin(auth.url, expires)


def device_offer(device: DeviceAuthorization) -> dict[str, Any]:
    """What a notification tells the person about a device login (never the device code)."""
    offer: dict[str, Any] = {
        "user_code": device.user_code,
        "verification_uri": device.verification_uri,
        "device_expires_at": (utcnow() + timedelta(seconds=device.expires_in)).isoformat(),
    }
    if device.verification_uri_complete:
        offer["verification_uri_complete"] = device.verification_uri_complete
    return offer
