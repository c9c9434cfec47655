"""The connector file format: one TOML document to one :class:`~valetkey_hookspecs.Connector`.

Validation is strict and complete: unknown keys are rejected, every value's type is checked, and
every problem is reported (not only the first) as ``(field, message)``, where ``field`` is the
dotted TOML key (``auth.token_url``, ``injection.hosts[1]``). Messages never echo a value that
could be secret: types are named, and only slugs, host patterns, header names and URLs are quoted.

A file looks like this (see the plugin's README for every key)::

    slug = "acme"                       # optional: defaults to the file name without .toml
    name = "Acme"
    description = "Acme API (API key)"
    docs_url = "https://docs.acme.example/api"

    [auth]
    type = "api_key"                    # "oauth2", "api_key" or "basic"

    [injection]
    hosts = ["api.acme.example"]
    header = "Authorization"
    format = "Bearer {token}"
    env_var = "ACME_API_KEY"

    [rate]
    requests = 60
    per_seconds = 60
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from valetkey_hookspecs import AuthSpec, AuthType, Connector, Injection, RateProfile

# The same rules as the conformance kit (valetkey_hookspecs.testing.connector), which a plugin
# cannot import at run time (it needs pytest); a test keeps the two in step.
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")
ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")

#: the keys each table accepts ("" is the top level)
KEYS: dict[str, tuple[str, ...]] = {
    "": ("slug", "name", "description", "docs_url", "auth", "injection", "rate"),
    "auth": (
        "type",
        "authorize_url",
        "token_url",
        "device_authorization_url",
        "revocation_url",
        "scopes",
        "pkce",
        "client_auth",
        "extra_authorize_params",
        "scope_separator",
    ),
    "injection": ("hosts", "header", "format", "remove_headers", "add_headers", "env_var"),
    "rate": ("requests", "per_seconds"),
}
AUTH_TYPES = tuple(t.value for t in AuthType)
CLIENT_AUTH = ("basic", "post", "none")
_URL_KEYS = ("authorize_url", "token_url", "device_authorization_url", "revocation_url")
#: keys of ``[auth]`` that only mean something for OAuth2
OAUTH2_ONLY = (
    *_URL_KEYS,
    "scopes",
    "pkce",
    "client_auth",
    "extra_authorize_params",
    "scope_separator",
)
#: authorization parameters the OAuth flow sets itself
RESERVED_PARAMS = frozenset(
    {
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    }
)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_PLACEHOLDERS = ("{token}", "{secret}")


class ConnectorFileError(Exception):
    """A connector file that does not describe a valid connector: every ``(field, message)``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in errors))
        self.errors = errors

    def lines(self, source: str) -> list[str]:
        """One line per problem: ``<source>: <field>: <message>``."""
        return [f"{source}: {f}: {m}" if f else f"{source}: {m}" for f, m in self.errors]


def _kind(value: Any) -> str:
    """A value's TOML type, for messages (never the value itself)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def url_problem(url: str) -> str | None:
    """Why ``url`` is not acceptable as an endpoint, or None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host, parts = None, None
    if (
        parts is not None
        and host
        and (parts.scheme == "https" or (parts.scheme == "http" and host in _LOOPBACK))
    ):
        return None
    return f"{url!r} is not an https:// URL (plain http:// is allowed for loopback hosts only)"


def host_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not an acceptable injection host pattern, or None."""
    if not HOST_PATTERN.match(pattern):
        return (
            f"{pattern!r} is not a host pattern (a lower-case host name such as "
            "'api.example.com', '*.' in front for its sub-domains, ':port' after for one port)"
        )
    if pattern.startswith("*."):
        labels = pattern[2:].split(":")[0].split(".")
        if len(labels) < 2:
            return (
                f"{pattern!r} would match every host under a top-level domain: "
                "a wildcard needs at least two labels after '*.' ('*.example.com')"
            )
    return None


def placeholder_problem(text: str, *, required: bool) -> str | None:
    """Why a header value template is not acceptable, or None."""
    rest = text
    for placeholder in _PLACEHOLDERS:
        rest = rest.replace(placeholder, "")
    if "{" in rest or "}" in rest:
        return "only the placeholders {token} and {secret} may appear in braces"
    if required and rest == text:
        return "must place {token} or {secret}"
    return None


class _Reader:
    """Reads typed values out of the parsed TOML, collecting every problem."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, field: str, message: str) -> None:
        self.errors.append((field, message))

    @staticmethod
    def _at(section: str, key: str) -> str:
        return f"{section}.{key}" if section else key

    def table(self, data: Mapping[str, Any], section: str) -> None:
        """Reject keys the section does not know."""
        known = KEYS[section]
        for key in data:
            if key not in known:
                self.fail(self._at(section, key), f"unknown key (known keys: {', '.join(known)})")

    def string(
        self, data: Mapping[str, Any], section: str, key: str, *, required: bool = False
    ) -> str | None:
        if key not in data:
            if required:
                self.fail(self._at(section, key), "required")
            return None
        value = data[key]
        if not isinstance(value, str):
            self.fail(self._at(section, key), f"expected a string, got {_kind(value)}")
            return None
        return value

    def boolean(self, data: Mapping[str, Any], section: str, key: str) -> bool | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, bool):
            self.fail(self._at(section, key), f"expected true or false, got {_kind(value)}")
            return None
        return value

    def strings(self, data: Mapping[str, Any], section: str, key: str) -> tuple[str, ...] | None:
        if key not in data:
            return None
        value = data[key]
        field = self._at(section, key)
        if not isinstance(value, list):
            self.fail(field, f"expected an array of strings, got {_kind(value)}")
            return None
        good = True
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{field}[{i}]", f"expected a string, got {_kind(item)}")
                good = False
        return tuple(value) if good else None

    def str_table(self, data: Mapping[str, Any], section: str, key: str) -> dict[str, str] | None:
        if key not in data:
            return None
        value = data[key]
        field = self._at(section, key)
        if not isinstance(value, dict):
            self.fail(field, f"expected a table of strings, got {_kind(value)}")
            return None
        good = True
        for name, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{field}.{name}", f"expected a string, got {_kind(item)}")
                good = False
        return dict(value) if good else None

    def sub_table(self, data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, dict):
            self.fail(key, f"expected a table ([{key}]), got {_kind(value)}")
            return None
        self.table(value, key)
        return value


def parse_connector(data: Mapping[str, Any], *, default_slug: str | None = None) -> Connector:
    """Build a connector from a parsed TOML document, or raise :class:`ConnectorFileError`.

    :param default_slug: the slug when the document sets none (the file name without ``.toml``).
    """
    r = _Reader()
    r.table(data, "")

    slug = r.string(data, "", "slug")
    if "slug" not in data:
        if default_slug is None:
            r.fail("slug", "required")
        elif not SLUG.match(default_slug):
            r.fail(
                "slug",
                f'the file name {default_slug!r} is not a valid slug: set slug = "..." '
                "(lower-case letters, digits and dashes) or rename the file",
            )
        else:
            slug = default_slug
    elif slug is not None and not SLUG.match(slug):
        r.fail(
            "slug",
            f"{slug!r} is not a valid slug (lower-case letters, digits and dashes, "
            "starting with a letter or digit, at most 63 characters)",
        )
        slug = None

    name = r.string(data, "", "name", required=True)
    if name is not None and not name.strip():
        r.fail("name", "must not be empty")
    description = r.string(data, "", "description")
    docs_url = r.string(data, "", "docs_url")
    if docs_url is not None and (problem := url_problem(docs_url)):
        r.fail("docs_url", problem)

    auth = _auth(r, data)
    injection = _injection(r, data)
    rate = _rate(r, data)

    if r.errors:
        raise ConnectorFileError(r.errors)
    assert slug is not None
    assert name is not None
    assert auth is not None
    return Connector(
        slug=slug,
        name=name.strip(),
        auth=auth,
        injection=injection,
        rate=rate,
        description=(description or "").strip(),
        docs_url=docs_url,
    )


def _auth(r: _Reader, data: Mapping[str, Any]) -> AuthSpec | None:
    if "auth" not in data:
        r.fail("auth", 'required ([auth] with at least type = "oauth2" or "api_key")')
        return None
    table = r.sub_table(data, "auth")
    if table is None:
        return None
    kind = r.string(table, "auth", "type", required=True)
    if kind is not None and kind not in AUTH_TYPES:
        r.fail("auth.type", f"{kind!r} is not one of: {', '.join(AUTH_TYPES)}")
        return None
    if kind is None:
        return None
    auth_type = AuthType(kind)

    if auth_type is not AuthType.OAUTH2:
        for key in OAUTH2_ONLY:
            if key in table:
                r.fail(f"auth.{key}", f'only used with type "oauth2", not with type "{kind}"')
        return AuthSpec(type=auth_type)

    urls: dict[str, str] = {}
    for key in _URL_KEYS:
        value = r.string(table, "auth", key)
        if value is None:
            continue
        if problem := url_problem(value):
            r.fail(f"auth.{key}", problem)
        else:
            urls[key] = value
    if "token_url" not in table:
        r.fail("auth.token_url", 'required for type "oauth2"')
    if "authorize_url" not in table and "device_authorization_url" not in table:
        r.fail(
            "auth.authorize_url",
            'type "oauth2" needs authorize_url, device_authorization_url or both',
        )

    scopes = r.strings(table, "auth", "scopes")
    for i, scope in enumerate(scopes or ()):
        if not scope or any(c.isspace() for c in scope):
            r.fail(f"auth.scopes[{i}]", "a scope is one non-empty word without spaces")
    pkce = r.boolean(table, "auth", "pkce")
    client_auth = r.string(table, "auth", "client_auth")
    if client_auth is not None and client_auth not in CLIENT_AUTH:
        r.fail("auth.client_auth", f"{client_auth!r} is not one of: {', '.join(CLIENT_AUTH)}")
    separator = r.string(table, "auth", "scope_separator")
    if separator is not None and separator not in (" ", ","):
        r.fail("auth.scope_separator", 'must be " " (the standard) or ","')
    params = r.str_table(table, "auth", "extra_authorize_params")
    for key in params or {}:
        if key in RESERVED_PARAMS:
            r.fail(
                f"auth.extra_authorize_params.{key}",
                "set by the OAuth flow itself; it cannot be overridden here",
            )

    spec: dict[str, Any] = dict(urls)
    if scopes is not None:
        spec["scopes"] = scopes
    if pkce is not None:
        spec["pkce"] = pkce
    if client_auth is not None:
        spec["client_auth"] = client_auth
    if params is not None:
        spec["extra_authorize_params"] = params
    if separator is not None:
        spec["scope_separator"] = separator
    return AuthSpec(type=auth_type, **spec)


def _injection(r: _Reader, data: Mapping[str, Any]) -> Injection | None:
    table = r.sub_table(data, "injection")
    if table is None:
        return None
    hosts = r.strings(table, "injection", "hosts")
    if "hosts" not in table:
        r.fail("injection.hosts", "required: the hosts whose requests carry the credential")
    elif hosts is not None and not hosts:
        r.fail("injection.hosts", "must name at least one host")
    for i, host in enumerate(hosts or ()):
        if problem := host_problem(host):
            r.fail(f"injection.hosts[{i}]", problem)

    header = r.string(table, "injection", "header")
    if header is not None and not HEADER.match(header):
        r.fail("injection.header", f"{header!r} is not a valid HTTP header name")
    fmt = r.string(table, "injection", "format")
    if fmt is not None and (problem := placeholder_problem(fmt, required=True)):
        r.fail("injection.format", problem)
    remove = r.strings(table, "injection", "remove_headers")
    for i, name in enumerate(remove or ()):
        if not HEADER.match(name):
            r.fail(f"injection.remove_headers[{i}]", f"{name!r} is not a valid HTTP header name")
    add = r.str_table(table, "injection", "add_headers")
    for name, value in (add or {}).items():
        if not HEADER.match(name):
            r.fail(f"injection.add_headers.{name}", "not a valid HTTP header name")
        elif problem := placeholder_problem(value, required=False):
            r.fail(f"injection.add_headers.{name}", problem)
    env_var = r.string(table, "injection", "env_var")
    if env_var is not None and not ENV_VAR.match(env_var):
        r.fail(
            "injection.env_var",
            f"{env_var!r} is not an environment variable name (A-Z, 0-9 and _, e.g. ACME_API_KEY)",
        )

    rule: dict[str, Any] = {"hosts": hosts or ()}
    if header is not None:
        rule["header"] = header
    if fmt is not None:
        rule["format"] = fmt
    if remove is not None:
        rule["remove_headers"] = remove
    if add is not None:
        rule["add_headers"] = add
    if env_var is not None:
        rule["env_var"] = env_var
    return Injection(**rule)


def _rate(r: _Reader, data: Mapping[str, Any]) -> RateProfile | None:
    table = r.sub_table(data, "rate")
    if table is None:
        return None
    requests = table.get("requests")
    if "requests" not in table:
        r.fail("rate.requests", "required: how many requests per window")
    elif isinstance(requests, bool) or not isinstance(requests, int):
        r.fail("rate.requests", f"expected an integer, got {_kind(requests)}")
        requests = None
    elif requests <= 0:
        r.fail("rate.requests", "must be at least 1")
        requests = None
    per_seconds = table.get("per_seconds", 60.0)
    if isinstance(per_seconds, bool) or not isinstance(per_seconds, int | float):
        r.fail("rate.per_seconds", f"expected a number of seconds, got {_kind(per_seconds)}")
        per_seconds = None
    elif per_seconds <= 0:
        r.fail("rate.per_seconds", "must be more than 0")
        per_seconds = None
    if requests is None or per_seconds is None:
        return None
    return RateProfile(requests=requests, per_seconds=float(per_seconds))
