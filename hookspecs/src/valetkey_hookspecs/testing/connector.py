"""ConnectorContract: checks every connector a plugin registers is well formed."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from ..types import AuthType, Connector

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")
ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _url_ok(url: str) -> bool:
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    return bool(parts.hostname) and (
        parts.scheme == "https" or (parts.scheme == "http" and loopback)
    )


class ConnectorContract:
    """Subclass and override ``connectors`` to return the connectors your plugin registers."""

    @pytest.fixture
    def connectors(self) -> list[Connector]:
        raise NotImplementedError("override the 'connectors' fixture to return your connectors")

    def test_there_is_at_least_one(self, connectors: list[Connector]) -> None:
        assert connectors, "the plugin registers no connector"
        assert all(isinstance(c, Connector) for c in connectors)

    def test_slugs_are_valid_and_unique(self, connectors: list[Connector]) -> None:
        slugs = [c.slug for c in connectors]
        bad = [s for s in slugs if not SLUG.match(s)]
        assert not bad, f"invalid slugs (lower case, digits, dashes): {bad}"
        assert len(set(slugs)) == len(slugs), "duplicate slugs"

    def test_names_are_set(self, connectors: list[Connector]) -> None:
        assert all(c.name.strip() for c in connectors)

    def test_oauth2_connectors_have_usable_endpoints(self, connectors: list[Connector]) -> None:
        for c in connectors:
            if c.auth.type is not AuthType.OAUTH2:
                continue
            assert c.auth.token_url, f"{c.slug}: an OAuth2 connector needs a token_url"
            assert _url_ok(c.auth.token_url), f"{c.slug}: token_url must be https"
            assert c.auth.authorize_url or c.auth.device_authorization_url, (
                f"{c.slug}: an OAuth2 connector needs an authorize or device-authorization URL"
            )
            for url in (
                c.auth.authorize_url,
                c.auth.device_authorization_url,
                c.auth.revocation_url,
            ):
                assert url is None or _url_ok(url), f"{c.slug}: {url} must be https"
            assert c.auth.client_auth in ("basic", "post", "none"), f"{c.slug}: client_auth"

    def test_injection_rules_are_well_formed(self, connectors: list[Connector]) -> None:
        for c in connectors:
            rule = c.injection
            if rule is None:
                continue
            assert rule.hosts, f"{c.slug}: injection without hosts would inject nowhere"
            for host in rule.hosts:
                assert HOST_PATTERN.match(host), f"{c.slug}: bad host pattern {host!r}"
            assert HEADER.match(rule.header), f"{c.slug}: bad header name {rule.header!r}"
            assert "{token}" in rule.format or "{secret}" in rule.format, (
                f"{c.slug}: format must place {{token}} or {{secret}}"
            )
            for name in (*rule.remove_headers, *rule.add_headers):
                assert HEADER.match(name), f"{c.slug}: bad header name {name!r}"
            assert rule.env_var is None or ENV_VAR.match(rule.env_var), f"{c.slug}: env_var"

    def test_rate_profiles_are_positive(self, connectors: list[Connector]) -> None:
        for c in connectors:
            if c.rate is not None:
                assert c.rate.requests > 0, f"{c.slug}: rate.requests"
                assert c.rate.per_seconds > 0, f"{c.slug}: rate.per_seconds"
