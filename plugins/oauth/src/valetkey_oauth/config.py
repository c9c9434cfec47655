"""The ``[plugin.oauth]`` table of plugins.toml, and where a connector's OAuth client comes from.

A connector's client id (and, for a confidential client, its secret) is found, in this order:

1. the environment: ``VALETKEY_OAUTH_<SLUG>_CLIENT_ID`` and ``VALETKEY_OAUTH_<SLUG>_CLIENT_SECRET``
   (the slug upper-cased, ``-`` and ``.`` turned into ``_``) — when the id variable is set, both
   values come from the environment;
2. ``[plugin.oauth.clients.<slug>]`` in plugins.toml, whose values are usually ``{ "$env" = ... }``
   or ``{ "$file" = ... }`` references so the secret never sits in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from valetkey_hookspecs import ConfigError

#: the plugin's name (its entry point), used in messages
PLUGIN = "oauth"


@dataclass(frozen=True)
class ClientConfig:
    """One OAuth client registered with a provider: ``[plugin.oauth.clients.<slug>]``."""

    client_id: str = ""
    #: only for confidential clients (``client_auth = "basic"`` or ``"post"``)
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class OAuthConfig:
    """``[plugin.oauth]``: the OAuth clients per connector slug, and the flows' time limits."""

    #: connector slug -> its client (id and optional secret)
    clients: dict[str, ClientConfig] = field(default_factory=dict)
    #: seconds to wait for the browser to come back to the loopback redirect
    login_timeout: float = 300.0
    #: seconds for one HTTP request to a token or device endpoint
    http_timeout: float = 30.0
    #: open the system browser for the authorization-code flow (false: print the URL only)
    open_browser: bool = True


@dataclass(frozen=True)
class ClientCredentials:
    """A resolved client: its id, its secret if any, and where they came from (for messages)."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    source: str = ""


def env_prefix(slug: str) -> str:
    """``VALETKEY_OAUTH_<SLUG>_``: the slug upper-cased, anything not alphanumeric as ``_``."""
    return f"VALETKEY_OAUTH_{re.sub(r'[^A-Za-z0-9]', '_', slug).upper()}_"


def resolve_client(
    slug: str, config: OAuthConfig, env: Mapping[str, str] | None = None
) -> ClientCredentials:
    """The client for connector ``slug``, or a ``ConfigError`` naming both ways to set it."""
    environ = os.environ if env is None else env
    prefix = env_prefix(slug)
    client_id = environ.get(f"{prefix}CLIENT_ID", "").strip()
    if client_id:
        secret = environ.get(f"{prefix}CLIENT_SECRET") or None
        return ClientCredentials(client_id, secret, source=f"{prefix}CLIENT_ID")
    entry = config.clients.get(slug)
    if entry is not None and entry.client_id.strip():
        return ClientCredentials(
            entry.client_id.strip(),
            entry.client_secret or None,
            source=f"[plugin.{PLUGIN}.clients.{slug}]",
        )
    raise ConfigError(
        f"no OAuth client id for connector {slug!r}: register an OAuth app with the provider, "
        f"then set the environment variable {prefix}CLIENT_ID (and {prefix}CLIENT_SECRET for a "
        f"confidential client), or in plugins.toml: [plugin.{PLUGIN}.clients.{slug}] "
        f'client_id = {{ "$env" = "..." }}'
    )


def require_secret(slug: str, client: ClientCredentials, how: str) -> str:
    """The client secret a ``basic`` / ``post`` client authentication needs."""
    if client.client_secret:
        return client.client_secret
    prefix = env_prefix(slug)
    raise ConfigError(
        f"connector {slug!r} authenticates its client with {how!r} but no client secret is set "
        f"(client id from {client.source}): set {prefix}CLIENT_SECRET, or client_secret = "
        f'{{ "$env" = "..." }} in [plugin.{PLUGIN}.clients.{slug}]'
    )
