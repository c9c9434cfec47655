"""``[plugin.proxy]``: where the proxy listens, how long the daemon idles, upstream trust."""

from __future__ import annotations

from dataclasses import dataclass, field

from valetkey_hookspecs import ConfigError


@dataclass(frozen=True)
class ProxyConfig:
    """Proxy daemon settings (all optional)."""

    #: the proxy's listening address (loopback unless boxes on a bridge network must reach it)
    listen_host: str = "127.0.0.1"
    #: the proxy's port; 0 picks a free one (``valetkey proxy status`` shows it)
    port: int = 0
    #: the daemon exits this many seconds after its last run leaves
    idle_timeout: float = 300.0
    #: how often runs with a container id are checked through the box runtime
    liveness_interval: float = 30.0
    #: a PEM file of extra CAs trusted for upstream TLS (added to the system store)
    extra_ca_file: str = ""
    #: connect to another address for a host: ``{"api.github.test" = "127.0.0.1:8443"}``; TLS
    #: names are still checked against the original host
    upstream_map: dict[str, str] = field(default_factory=dict)
    #: largest request body the proxy buffers (bytes); larger requests get 413
    max_request_body: int = 32 * 1024 * 1024
    #: where the ``aws`` grant calls STS (default: AWS's regional endpoint; tests use moto)
    aws_sts_endpoint: str = ""
    #: coalesce runs.json writes within this many seconds
    persist_debounce: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("[plugin.proxy] port: must be 0..65535")
        for name in ("idle_timeout", "liveness_interval", "persist_debounce"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[plugin.proxy] {name}: must be a positive number of seconds")
        if self.max_request_body < 1024:
            raise ConfigError("[plugin.proxy] max_request_body: must be at least 1024 bytes")
        for host, target in self.upstream_map.items():
            _, sep, port = target.rpartition(":")
            if not sep or not port.isdigit():
                raise ConfigError(
                    f"[plugin.proxy] upstream_map.{host}: {target!r} is not host:port"
                )
