"""Connectors as data for people and scripts: JSON-ready dicts, short rate texts, the detail
lines of ``connectors show`` and the README's catalog table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from valetkey_hookspecs import Connector, RateProfile

_WINDOWS = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "day"}


def rate_text(rate: RateProfile | None) -> str:
    """``5000/h``, ``60/min``, ``3/s``, ``100/10s``; ``-`` without a profile."""
    if rate is None:
        return "-"
    unit = _WINDOWS.get(rate.per_seconds)
    return f"{rate.requests}/{unit}" if unit else f"{rate.requests}/{rate.per_seconds:g}s"


def connector_to_dict(connector: Connector, source: str | None = None) -> dict[str, Any]:
    """Every field of a connector, JSON-ready (the shape of ``connectors show --json``)."""
    auth = connector.auth
    rule = connector.injection
    rate = connector.rate
    oauth2 = auth.type.value == "oauth2"
    return {
        "slug": connector.slug,
        "name": connector.name,
        "description": connector.description,
        "docs_url": connector.docs_url,
        "auth": {
            "type": auth.type.value,
            "authorize_url": auth.authorize_url,
            "token_url": auth.token_url,
            "device_authorization_url": auth.device_authorization_url,
            "revocation_url": auth.revocation_url,
            "scopes": list(auth.scopes),
            # meaningful for OAuth2 only: null for the other auth types
            "pkce": auth.pkce if oauth2 else None,
            "client_auth": auth.client_auth if oauth2 else None,
            "extra_authorize_params": dict(auth.extra_authorize_params),
        },
        "injection": None
        if rule is None
        else {
            "hosts": list(rule.hosts),
            "header": rule.header,
            "format": rule.format,
            "remove_headers": list(rule.remove_headers),
            "add_headers": dict(rule.add_headers),
            "env_var": rule.env_var,
        },
        "rate": None
        if rate is None
        else {"requests": rate.requests, "per_seconds": rate.per_seconds},
        "source": source,
    }


def detail_lines(connector: Connector, source: str | None = None) -> list[tuple[str, str]]:
    """``(label, value)`` rows for ``connectors show``: every field, ``-`` where unset."""
    auth = connector.auth
    rows: list[tuple[str, str]] = [
        ("slug", connector.slug),
        ("name", connector.name),
        ("description", connector.description or "-"),
        ("docs", connector.docs_url or "-"),
        ("source", source or "-"),
        ("auth", auth.type.value),
    ]
    if auth.type.value == "oauth2":
        params = " ".join(f"{k}={v}" for k, v in auth.extra_authorize_params.items())
        rows += [
            ("  authorize", auth.authorize_url or "-"),
            ("  token", auth.token_url or "-"),
            ("  device", auth.device_authorization_url or "-"),
            ("  revoke", auth.revocation_url or "-"),
            ("  scopes", " ".join(auth.scopes) or "-"),
            ("  pkce", "yes" if auth.pkce else "no"),
            ("  client auth", auth.client_auth),
            ("  extra params", params or "-"),
        ]
    rule = connector.injection
    if rule is None:
        rows.append(("injection", "-"))
    else:
        rows += [
            ("injection", ", ".join(rule.hosts)),
            ("  header", f"{rule.header}: {rule.format}"),
        ]
        rows += [("  add header", f"{k}: {v}") for k, v in rule.add_headers.items()]
        rows.append(("  remove headers", ", ".join(rule.remove_headers) or "-"))
        rows.append(("  env var", rule.env_var or "-"))
    rate = connector.rate
    rows.append(
        (
            "rate",
            "-"
            if rate is None
            else f"{rate.requests} requests per {rate.per_seconds:g} s ({rate_text(rate)})",
        )
    )
    return rows


def catalog_markdown(connectors: Iterable[Connector]) -> str:
    """The README's table of connectors: slug, name, auth, injected hosts, rate."""
    lines = [
        "| slug | name | auth | injected into | rate |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(connectors, key=lambda c: c.slug):
        hosts = ", ".join(f"`{h}`" for h in c.injection.hosts) if c.injection else "-"
        lines.append(
            f"| `{c.slug}` | {c.name} | {c.auth.type.value} | {hosts} | {rate_text(c.rate)} |"
        )
    return "\n".join(lines) + "\n"
