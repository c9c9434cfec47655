"""``[plugin.broker]``: refresh timing and the scheduler's batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from valetkey_hookspecs import ConfigError


@dataclass(frozen=True)
class BrokerConfig:
    """Token-lifecycle settings."""

    #: refresh a credential on read when it expires within this many seconds
    refresh_lead: float = 300.0
    #: how often the refresh-ahead scheduler of ``valetkey serve`` runs
    schedule_every: float = 60.0
    #: credentials refreshed per scheduler batch
    batch_size: int = 100
    #: how long one process may hold a connection's refresh lease
    lease_ttl: float = 30.0
    #: how long a vend waits for another process's refresh before giving up
    refresh_wait: float = 30.0
    #: where providers redirect after an API-started OAuth login: <public_url>/api/oauth/callback
    public_url: str = ""
    #: where the callback may send the browser afterwards (exact match; empty: nowhere)
    oauth_return_urls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("refresh_lead", "schedule_every", "lease_ttl", "refresh_wait"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[plugin.broker] {name}: must be a positive number of seconds")
        if self.batch_size < 1:
            raise ConfigError("[plugin.broker] batch_size: must be at least 1")
        loopback = ("http://127.0.0.1", "http://localhost", "http://[::1]")
        if self.public_url and not self.public_url.startswith(("https://", *loopback)):
            raise ConfigError("[plugin.broker] public_url: must be https (or http on loopback)")
