"""``[plugin.relay-server]``: the public side's URL and limits."""

from __future__ import annotations

from dataclasses import dataclass

from valetkey_hookspecs import ConfigError
from valetkey_relay.protocol import MAX_FRAME_BYTES


@dataclass(frozen=True)
class RelayServerConfig:
    """Settings of ``valetkey relay host`` (all optional)."""

    #: the URL the public reaches this host at (https://relay.example); empty: taken from each
    #: request (right when nothing rewrites the Host header or the scheme in front of it)
    public_url: str = ""
    #: public MCP requests per second per relay (token bucket refill rate)
    rate_per_second: float = 20.0
    #: requests a relay may send in one burst above the rate
    burst: int = 40
    #: the largest WebSocket frame and public request body, in bytes
    max_frame_bytes: int = MAX_FRAME_BYTES
    #: seconds a public request waits for the machine's answer (then 504)
    call_timeout: float = 65.0
    #: how many relays the connect page may create (it is open to anyone who reaches it)
    max_relays: int = 1000

    def __post_init__(self) -> None:
        if not self.rate_per_second > 0:
            raise ConfigError("[plugin.relay-server] rate_per_second: must be positive")
        if self.burst < 1:
            raise ConfigError("[plugin.relay-server] burst: must be at least 1")
        if self.max_frame_bytes < 1024:
            raise ConfigError("[plugin.relay-server] max_frame_bytes: must be at least 1024")
        if not self.call_timeout > 0:
            raise ConfigError("[plugin.relay-server] call_timeout: must be positive")
        if self.max_relays < 1:
            raise ConfigError("[plugin.relay-server] max_relays: must be at least 1")
        if self.public_url and not self.public_url.startswith(("https://", "http://")):
            raise ConfigError("[plugin.relay-server] public_url: must be an http(s) URL")
