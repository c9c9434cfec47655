"""Host patterns, as grants and network policies use them.

- ``api.github.com`` matches that host only (any port);
- ``*.github.com`` matches sub-domains at any depth (``a.b.github.com``) but not ``github.com``
  itself, and never ``evilgithub.com``;
- a port in a pattern (``api.example.com:8443``, ``*.example.com:8443``) is enforced;
- when a host:port is looked up, port-specific patterns win over port-less ones (``host:port``
  falls back to ``host``).
"""

from __future__ import annotations

from dataclasses import dataclass

from valetkey_hookspecs import InvalidInput


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One parsed pattern."""

    text: str
    base: str
    wildcard: bool
    port: int | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Parse ``[*.]host[:port]``; ``InvalidInput`` names what is wrong."""
        raw = text.strip().lower()
        if not raw or any(c.isspace() for c in raw) or "/" in raw or "@" in raw:
            raise InvalidInput(f"host pattern {text!r}: expected host, *.domain or host:port")
        port: int | None = None
        host = raw
        if raw.startswith("["):  # [::1]:8080
            end = raw.find("]")
            if end < 0:
                raise InvalidInput(f"host pattern {text!r}: unclosed '['")
            host, rest = raw[1:end], raw[end + 1 :]
            if rest:
                port = _port(text, rest.removeprefix(":"))
        elif raw.count(":") == 1:
            host, port_text = raw.split(":")
            port = _port(text, port_text)
        wildcard = host.startswith("*.")
        base = host[2:] if wildcard else host
        if not base or "*" in base or base.startswith(".") or base.endswith("."):
            raise InvalidInput(
                f"host pattern {text!r}: a wildcard is only allowed as a leading '*.'"
            )
        return cls(text=text, base=base, wildcard=wildcard, port=port)

    def matches(self, host: str, port: int) -> bool:
        """Does ``host`` (lower-case, no port) at ``port`` match?"""
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.base) and len(host) > len(self.base) + 1
        return host == self.base


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise InvalidInput(f"host pattern {text!r}: {value!r} is not a port")
    return int(value)


def parse_all(patterns: list[str] | tuple[str, ...]) -> tuple[HostPattern, ...]:
    """Parse a list, port-specific patterns first (so ``host:port`` falls back to ``host``)."""
    parsed = [HostPattern.parse(p) for p in patterns]
    return tuple(sorted(parsed, key=lambda p: p.port is None))


def first_match(patterns: tuple[HostPattern, ...], host: str, port: int) -> HostPattern | None:
    """The first pattern (port-specific ones first) that matches."""
    for pattern in patterns:
        if pattern.matches(host, port):
            return pattern
    return None
