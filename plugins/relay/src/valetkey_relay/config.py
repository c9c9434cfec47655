"""``[plugin.relay]``: where ``valetkey relay connect`` sends the browser, and the limits of
``valetkey relay serve``."""

from __future__ import annotations

from dataclasses import dataclass

from valetkey_hookspecs import ConfigError

from .protocol import MAX_FRAME_BYTES


@dataclass(frozen=True)
class RelayConfig:
    """The relay client's settings (all optional)."""

    #: the relay host ``valetkey relay connect`` opens (its connect page is <server>/connect)
    server: str = ""
    #: seconds one relayed MCP request may run on this machine before it is answered -32603
    call_timeout: float = 60.0
    #: the largest frame accepted or sent, in bytes
    max_frame_bytes: int = MAX_FRAME_BYTES
    #: relayed requests handled at the same time
    concurrency: int = 64
    #: seconds between WebSocket pings on an idle connection
    ping_interval: float = 20.0
    #: seconds the probe of 'relay attach' / 'relay connect' may take
    probe_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("call_timeout", "ping_interval", "probe_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[plugin.relay] {name}: must be a positive number of seconds")
        if self.max_frame_bytes < 1024:
            raise ConfigError("[plugin.relay] max_frame_bytes: must be at least 1024")
        if self.concurrency < 1:
            raise ConfigError("[plugin.relay] concurrency: must be at least 1")
        if self.server and not self.server.startswith(("https://", "http://")):
            raise ConfigError("[plugin.relay] server: must be an http(s) URL")
