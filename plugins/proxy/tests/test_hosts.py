"""The host-pattern table of the proxy issue, and bad patterns named in their errors."""

from __future__ import annotations

import pytest

from valetkey_hookspecs import InvalidInput
from valetkey_proxy.hosts import HostPattern, first_match, parse_all


@pytest.mark.parametrize(
    ("pattern", "host", "port", "expected"),
    [
        ("*.github.com", "a.b.github.com", 443, True),
        ("*.github.com", "api.github.com", 443, True),
        ("*.github.com", "github.com", 443, False),
        ("*.github.com", "evilgithub.com", 443, False),
        ("*.github.com", "github.com.evil.test", 443, False),
        ("api.github.com", "api.github.com", 8443, True),
        ("api.github.com", "xapi.github.com", 443, False),
        ("api.example.com:8443", "api.example.com", 8443, True),
        ("api.example.com:8443", "api.example.com", 443, False),
        ("*.example.com:8443", "a.example.com", 8443, True),
        ("*.example.com:8443", "a.example.com", 443, False),
        ("API.GitHub.com", "api.github.com", 443, True),
        ("[::1]:8080", "::1", 8080, True),
        ("127.0.0.1", "127.0.0.1", 9, True),
    ],
)
def test_host_pattern_table(pattern, host, port, expected):
    assert HostPattern.parse(pattern).matches(host, port) is expected


def test_host_port_patterns_win_over_host_patterns():
    patterns = parse_all(["api.example.com", "api.example.com:8443"])
    assert first_match(patterns, "api.example.com", 8443).text == "api.example.com:8443"
    assert first_match(patterns, "api.example.com", 443).text == "api.example.com"
    assert first_match(patterns, "other.example.com", 443) is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "expected host, \\*.domain or host:port"),
        ("https://api.github.com", "expected host"),
        ("api.*.com", "a wildcard is only allowed as a leading"),
        ("*", "a wildcard is only allowed"),
        ("api.github.com:99999", "'99999' is not a port"),
        ("api.github.com:x", "'x' is not a port"),
        ("[::1", "unclosed"),
    ],
)
def test_bad_patterns_are_named(pattern, message):
    with pytest.raises(InvalidInput, match=message):
        HostPattern.parse(pattern)
