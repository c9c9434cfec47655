"""notify-webhook: every notification (a connection that needs re-authorization, a refresh that
keeps failing, ...) POSTed as JSON to a URL of yours, signed with HMAC-SHA256 over the timestamp
and body, and retried with exponential backoff.

Only the hook implementations and the config live here; httpx is imported on the first delivery.
Receivers check a delivery with :func:`valetkey_notify_webhook.signing.verify_signature`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from valetkey_hookspecs import ConfigError, PluginContext, hookimpl

from .notifier import PLUGIN, WHERE, WebhookNotifier, check_settings, check_url
from .signing import verify_signature

if TYPE_CHECKING:
    from valetkey_hookspecs import KernelAPI, Notifier
    from valetkey_hookspecs.interfaces import RegisterFactory

__all__ = [
    "Config",
    "valetkey_config_schema",
    "valetkey_doctor",
    "valetkey_register_notifiers",
    "verify_signature",
]

#: a secret shorter than this gets a ``valetkey plugins doctor`` warning
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class Config:
    """``[plugin.notify-webhook]`` in plugins.toml."""

    #: where to POST; empty: the notifier is registered but sends nothing. https://, or http://
    #: to a loopback host. Hidden from repr: webhook URLs often embed a token.
    url: str = field(default="", repr=False)
    #: the HMAC-SHA256 key (a ``{ "$env" = ... }`` or ``{ "$file" = ... }`` reference); empty:
    #: deliveries are unsigned
    secret: str = field(default="", repr=False)
    #: notification kinds to send (``needs_reauth``, ``refresh_failed``, ...); empty: every kind
    events: list[str] = field(default_factory=list)
    #: seconds one attempt may take, connect to last byte
    timeout: float = 10.0
    #: attempts per delivery, the first included
    max_attempts: int = 5
    #: seconds before the second attempt; doubles per attempt, plus up to 50 % jitter
    backoff: float = 0.5
    #: the longest wait between two attempts (``Retry-After`` included)
    max_backoff: float = 30.0
    #: extra static headers (values may be ``$env`` references, e.g. an Authorization header)
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_url(self.url)
        check_settings(
            events=self.events,
            timeout=self.timeout,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            headers=self.headers,
        )

    def notifier(self) -> WebhookNotifier:
        """The notifier this config describes."""
        return WebhookNotifier(
            self.url,
            secret=self.secret,
            events=self.events,
            timeout=self.timeout,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            headers=self.headers,
        )


@hookimpl
def valetkey_config_schema() -> type[Config]:
    """``[plugin.notify-webhook]``: see :class:`Config`."""
    return Config


@hookimpl
def valetkey_register_notifiers(register: RegisterFactory[Notifier]) -> None:
    """Register the ``webhook`` notifier (it sends nothing until ``url`` is set)."""
    register("webhook", _factory)


@hookimpl
def valetkey_doctor(kernel: KernelAPI) -> list[str] | None:
    """Warn about an enabled webhook whose deliveries cannot be verified by receivers."""
    try:
        config: Config | None = kernel.plugin_config(PLUGIN)
    except ConfigError:
        return None  # an invalid table is reported by the config checks already
    if config is None or not config.url:
        return None
    if not config.secret:
        return [
            f"{WHERE}.secret is empty: deliveries are not signed, so receivers cannot tell "
            'them from forgeries (set secret = { "$env" = "VALETKEY_WEBHOOK_SECRET" })'
        ]
    if len(config.secret) < MIN_SECRET_LENGTH:
        return [
            f"{WHERE}.secret is shorter than {MIN_SECRET_LENGTH} characters: use a long random "
            'value (python -c "import secrets; print(secrets.token_hex(32))")'
        ]
    return None


def _factory(ctx: PluginContext) -> WebhookNotifier:
    config: Config = ctx.config or Config()
    return config.notifier()
