"""valetkey-oauth: the ``oauth2`` credential provider — authorization code + PKCE over a loopback
redirect (RFC 8252), the device authorization grant (RFC 8628), refresh and client credentials,
with a per-connector rate limiter in front of every request to a provider.

Only the hook implementations live here, and only light imports: the provider (with httpx) is
imported when the kernel first builds it, so ``valetkey --help`` never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import hookimpl

from .config import OAuthConfig

if TYPE_CHECKING:
    from valetkey_hookspecs import PluginContext
    from valetkey_hookspecs.interfaces import CredentialProvider, RegisterFactory

    from .provider import OAuthProvider

__all__ = ["valetkey_config_schema", "valetkey_register_credential_providers"]


@hookimpl
def valetkey_config_schema() -> type[Any]:
    """``[plugin.oauth]``: ``clients.<slug>`` (client id / secret) and time limits."""
    return OAuthConfig


@hookimpl
def valetkey_register_credential_providers(register: RegisterFactory[CredentialProvider]) -> None:
    """Register the ``oauth2`` provider (the name of ``AuthType.OAUTH2``)."""
    register("oauth2", build_provider)


def build_provider(ctx: PluginContext) -> OAuthProvider:
    """The provider for the plugin's validated config (defaults when unconfigured)."""
    from .provider import OAuthProvider

    config = ctx.config if isinstance(ctx.config, OAuthConfig) else OAuthConfig()
    return OAuthProvider(config)
