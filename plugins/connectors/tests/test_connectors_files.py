"""User-defined connectors: files in ``$XDG_CONFIG_HOME/valetkey/connectors`` and configured
folders, overriding, every kind of bad file (reported with path and field, skipped, the rest still
loading), the doctor hook, the configuration in force, and the per-process cache."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

import valetkey_connectors
from valetkey_connectors import config as config_module
from valetkey_connectors.config import ConnectorsConfig
from valetkey_connectors.loader import BUILTIN, load, parse_text
from valetkey_connectors.schema import ConnectorFileError
from valetkey_hookspecs import AuthType, ConfigError

OAUTH_APP = """\
slug = "{slug}"
name = "{name}"

[auth]
type = "oauth2"
authorize_url = "https://git.example.com/login/oauth/authorize"
token_url = "https://git.example.com/login/oauth/access_token"
scopes = ["repo"]
client_auth = "basic"
extra_authorize_params = {{ audience = "api" }}

[injection]
hosts = ["api.git.example.com", "*.git.example.com:8443"]
remove_headers = ["Cookie"]
add_headers = {{ "X-Api-Version" = "2022-11-28" }}
env_var = "GITHUB_TOKEN"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_good_file_adds_a_connector(user_dir: Path, acme_toml: str) -> None:
    path = write(user_dir, "acme.toml", acme_toml)
    catalog = load()
    acme = catalog.connectors["acme"]  # slug from the file name
    assert acme.name == "Acme"
    assert acme.auth.type is AuthType.API_KEY
    assert acme.injection is not None
    assert acme.injection.hosts == ("api.acme.example",)
    assert acme.injection.env_var == "ACME_API_KEY"
    assert acme.rate is not None and (acme.rate.requests, acme.rate.per_seconds) == (60, 60.0)
    assert catalog.sources["acme"] == str(path)
    assert catalog.problems == ()
    assert "github" in catalog.connectors  # the built-ins are still there


def test_a_full_oauth2_file_keeps_every_field(user_dir: Path) -> None:
    write(user_dir, "gitex.toml", OAUTH_APP.format(slug="gitex", name="Git Example"))
    gitex = load().connectors["gitex"]
    assert gitex.auth.type is AuthType.OAUTH2
    assert gitex.auth.token_url == "https://git.example.com/login/oauth/access_token"
    assert gitex.auth.scopes == ("repo",)
    assert gitex.auth.pkce is True  # the contract's default
    assert gitex.auth.client_auth == "basic"
    assert gitex.auth.extra_authorize_params == {"audience": "api"}
    rule = gitex.injection
    assert rule is not None
    assert rule.hosts == ("api.git.example.com", "*.git.example.com:8443")
    assert (rule.header, rule.format) == ("Authorization", "Bearer {token}")
    assert rule.remove_headers == ("Cookie",)
    assert rule.add_headers == {"X-Api-Version": "2022-11-28"}
    assert gitex.rate is None


def test_a_user_file_overrides_a_builtin_slug(
    user_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="valetkey.connectors")
    path = write(user_dir, "my-github.toml", OAUTH_APP.format(slug="github", name="GitHub (work)"))
    catalog = load()
    github = catalog.connectors["github"]
    assert github.name == "GitHub (work)"
    assert github.auth.token_url == "https://git.example.com/login/oauth/access_token"
    assert catalog.sources["github"] == str(path)
    assert catalog.problems == ()
    [record] = [r for r in caplog.records if "overrides" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert record.getMessage() == f"connector 'github' from {path} overrides the built-in one"


BAD_FILES = [
    pytest.param(
        "sep.toml",
        'name = "Sep"\n[auth]\ntype = "oauth2"\ntoken_url = "https://a.example/t"\n'
        'authorize_url = "https://a.example/a"\nscope_separator = ";"\n',
        'auth.scope_separator: must be " " (the standard) or ","',
        id="scope-separator",
    ),
    pytest.param(
        "broken.toml",
        'name = "Broken"\n[auth\ntype = "api_key"\n',
        # tomllib's own wording, with the position
        re.compile(r"invalid TOML: .+ \(at line 2, column \d+\)"),
        id="invalid-toml",
    ),
    pytest.param(
        "typo.toml",
        'name = "Typo"\nnmae = "x"\n[auth]\ntype = "api_key"\n',
        "nmae: unknown key (known keys: slug, name, description, docs_url, auth, injection, rate)",
        id="unknown-key",
    ),
    pytest.param(
        "typo2.toml",
        'name = "Typo"\n[auth]\ntype = "api_key"\n[injection]\nhosts = ["a.example"]\n'
        'heder = "X-Key"\n',
        "injection.heder: unknown key (known keys: hosts, header, format, remove_headers, "
        "add_headers, env_var)",
        id="unknown-key-in-table",
    ),
    pytest.param(
        "types.toml",
        'name = "Types"\n[auth]\ntype = "api_key"\n[rate]\nrequests = "60"\n',
        "rate.requests: expected an integer, got a string",
        id="wrong-type",
    ),
    pytest.param(
        "types2.toml",
        'name = "Types"\n[auth]\ntype = "api_key"\n[injection]\nhosts = "a.example"\n',
        "injection.hosts: expected an array of strings, got a string",
        id="wrong-type-array",
    ),
    pytest.param(
        "notoken.toml",
        'name = "No token"\n[auth]\ntype = "oauth2"\n'
        'authorize_url = "https://id.example.com/authorize"\n',
        'auth.token_url: required for type "oauth2"',
        id="oauth2-without-token-url",
    ),
    pytest.param(
        "plain.toml",
        'name = "Plain"\n[auth]\ntype = "oauth2"\nauthorize_url = "https://id.example.com/a"\n'
        'token_url = "http://id.example.com/token"\n',
        "auth.token_url: 'http://id.example.com/token' is not an https:// URL (plain http:// "
        "is allowed for loopback hosts only)",
        id="oauth2-plain-http",
    ),
    pytest.param(
        "hosts.toml",
        'name = "Hosts"\n[auth]\ntype = "api_key"\n[injection]\n'
        'hosts = ["api.example.com", "API.Example.com/v1"]\n',
        "injection.hosts[1]: 'API.Example.com/v1' is not a host pattern (a lower-case host name "
        "such as 'api.example.com', '*.' in front for its sub-domains, ':port' after for one "
        "port)",
        id="bad-host-pattern",
    ),
    pytest.param(
        "tld.toml",
        'name = "Everything"\n[auth]\ntype = "api_key"\n[injection]\nhosts = ["*.com"]\n',
        "injection.hosts[0]: '*.com' would match every host under a top-level domain: a "
        "wildcard needs at least two labels after '*.' ('*.example.com')",
        id="wildcard-top-level-domain",
    ),
    pytest.param(
        "slug.toml",
        'slug = "Acme Corp"\nname = "Acme"\n[auth]\ntype = "api_key"\n',
        "slug: 'Acme Corp' is not a valid slug (lower-case letters, digits and dashes, starting "
        "with a letter or digit, at most 63 characters)",
        id="bad-slug",
    ),
    pytest.param(
        "Acme Corp.toml",
        'name = "Acme"\n[auth]\ntype = "api_key"\n',
        "slug: the file name 'Acme Corp' is not a valid slug: set slug = \"...\" (lower-case "
        "letters, digits and dashes) or rename the file",
        id="bad-slug-from-file-name",
    ),
    pytest.param(
        "keyonly.toml",
        'name = "Key"\n[auth]\ntype = "api_key"\ntoken_url = "https://id.example.com/t"\n',
        'auth.token_url: only used with type "oauth2", not with type "api_key"',
        id="oauth2-field-on-api-key",
    ),
    pytest.param(
        "kind.toml",
        'name = "Kind"\n[auth]\ntype = "password"\n',
        "auth.type: 'password' is not one of: oauth2, api_key, basic",
        id="unknown-auth-type",
    ),
    pytest.param(
        "format.toml",
        'name = "Format"\n[auth]\ntype = "api_key"\n[injection]\nhosts = ["a.example.com"]\n'
        'format = "Bearer {key}"\n',
        "injection.format: only the placeholders {token} and {secret} may appear in braces",
        id="unknown-placeholder",
    ),
    pytest.param(
        "noauth.toml",
        'name = "No auth"\n',
        'auth: required ([auth] with at least type = "oauth2" or "api_key")',
        id="missing-auth",
    ),
    pytest.param(
        "rate.toml",
        'name = "Rate"\n[auth]\ntype = "api_key"\n[rate]\nrequests = 0\n',
        "rate.requests: must be at least 1",
        id="zero-rate",
    ),
    pytest.param(
        "params.toml",
        'name = "Params"\n[auth]\ntype = "oauth2"\ntoken_url = "https://id.example.com/t"\n'
        'device_authorization_url = "https://id.example.com/d"\n'
        'extra_authorize_params = { redirect_uri = "https://evil.example" }\n',
        "auth.extra_authorize_params.redirect_uri: set by the OAuth flow itself; it cannot be "
        "overridden here",
        id="reserved-authorize-param",
    ),
]


@pytest.mark.parametrize(("name", "text", "problem"), BAD_FILES)
def test_a_bad_file_is_reported_with_path_and_field_and_the_rest_still_load(
    user_dir: Path,
    acme_toml: str,
    caplog: pytest.LogCaptureFixture,
    name: str,
    text: str,
    problem: str | re.Pattern[str],
) -> None:
    caplog.set_level(logging.WARNING, logger="valetkey.connectors")
    bad = write(user_dir, name, text)
    write(user_dir, "acme.toml", acme_toml)
    catalog = load()
    assert "acme" in catalog.connectors and "github" in catalog.connectors
    [line] = catalog.problems
    assert line.startswith(f"{bad}: ")
    message = line[len(f"{bad}: ") :]
    if isinstance(problem, str):
        assert message == problem
    else:
        assert problem.fullmatch(message), message
    assert not any(src == str(bad) for src in catalog.sources.values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [line]


def test_every_problem_of_a_file_is_reported() -> None:
    text = (
        'slug = 3\nname = ""\n[auth]\ntype = "oauth2"\nscopes = ["a b"]\n[rate]\nper_seconds = -1\n'
    )
    with pytest.raises(ConnectorFileError) as caught:
        parse_text(text, "x.toml", default_slug="x")
    assert caught.value.lines("x.toml") == [
        "x.toml: slug: expected a string, got an integer",
        "x.toml: name: must not be empty",
        'x.toml: auth.token_url: required for type "oauth2"',
        'x.toml: auth.authorize_url: type "oauth2" needs authorize_url, '
        "device_authorization_url or both",
        "x.toml: auth.scopes[0]: a scope is one non-empty word without spaces",
        "x.toml: rate.requests: required: how many requests per window",
        "x.toml: rate.per_seconds: must be more than 0",
    ]


def test_a_secret_pasted_into_a_file_is_never_echoed() -> None:
    text = (
        'name = "Leaky"\n[auth]\ntype = "api_key"\n[injection]\nhosts = ["a.example.com"]\n'
        'env_var = 12345\n[rate]\nrequests = "sk-live-abcdef"\n'
    )
    with pytest.raises(ConnectorFileError) as caught:
        parse_text(text, "leaky.toml", default_slug="leaky")
    assert "sk-live-abcdef" not in str(caught.value)
    assert "12345" not in str(caught.value)


def test_two_files_of_one_folder_with_the_same_slug_keep_the_first(user_dir: Path) -> None:
    write(user_dir, "a.toml", OAUTH_APP.format(slug="gitex", name="First"))
    second = write(user_dir, "b.toml", OAUTH_APP.format(slug="gitex", name="Second"))
    catalog = load()
    assert catalog.connectors["gitex"].name == "First"
    assert catalog.problems == (
        f"{second}: slug: 'gitex' is also defined by a.toml in the same folder; that file is "
        "used and this one is skipped",
    )


def test_configured_folders_come_after_the_user_folder(
    tmp_path: Path, user_dir: Path, acme_toml: str
) -> None:
    write(user_dir, "acme.toml", acme_toml)
    team = tmp_path / "team"
    team.mkdir()
    override = write(team, "acme.toml", acme_toml.replace('name = "Acme"', 'name = "Acme (team)"'))
    catalog = load(ConnectorsConfig(dirs=(str(team),)))
    assert catalog.connectors["acme"].name == "Acme (team)"
    assert catalog.sources["acme"] == str(override)


def test_relative_and_home_folders_are_resolved(
    tmp_path: Path, acme_toml: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    relative = tmp_path / "config" / "valetkey" / "shared"
    relative.mkdir(parents=True)
    write(relative, "acme.toml", acme_toml)
    monkeypatch.setenv("HOME", str(tmp_path / "fakehome"))
    in_home = tmp_path / "fakehome" / "conns"
    in_home.mkdir(parents=True)
    write(in_home, "beta.toml", acme_toml)
    catalog = load(ConnectorsConfig(builtin=False, dirs=("shared", "~/conns")))
    assert sorted(catalog.connectors) == ["acme", "beta"]


def test_a_missing_configured_folder_is_a_problem_but_a_missing_user_folder_is_not(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere"
    catalog = load(ConnectorsConfig(dirs=(str(missing),)))
    assert catalog.problems == (f"[plugin.connectors] dirs: {missing}: no such folder",)
    assert "github" in catalog.connectors


def test_hidden_and_non_toml_files_are_ignored(user_dir: Path, acme_toml: str) -> None:
    write(user_dir, ".#acme.toml", "not toml at all [")
    write(user_dir, "notes.txt", "not toml at all [")
    write(user_dir, "acme.toml.bak", "not toml at all [")
    (user_dir / "folder.toml").mkdir()
    write(user_dir, "acme.toml", acme_toml)
    catalog = load()
    assert "acme" in catalog.connectors and catalog.problems == ()


def test_the_catalog_is_cached_until_a_file_changes(user_dir: Path, acme_toml: str) -> None:
    path = write(user_dir, "acme.toml", acme_toml)
    first = load()
    assert load() is first  # cached: nothing re-read
    path.write_text(acme_toml.replace('name = "Acme"', 'name = "Acme 2"'))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = load()
    assert second is not first
    assert second.connectors["acme"].name == "Acme 2"
    path.unlink()
    assert "acme" not in load().connectors


class FakeKernel:
    """What the plugin uses of a kernel: its ``[plugin.connectors]`` table."""

    def __init__(self, config: Any = None, error: Exception | None = None) -> None:
        self.config = config if config is not None else ConnectorsConfig()
        self.error = error

    def plugin_config(self, plugin: str) -> Any:
        assert plugin == "connectors"
        if self.error is not None:
            raise self.error
        return self.config


def test_the_doctor_hook_returns_one_line_per_problem(tmp_path: Path, user_dir: Path) -> None:
    bad = write(user_dir, "notoken.toml", 'name = "X"\n[auth]\ntype = "oauth2"\n')
    missing = tmp_path / "nowhere"
    kernel = FakeKernel(ConnectorsConfig(dirs=(str(missing),)))
    assert valetkey_connectors.valetkey_doctor(kernel) == [  # type: ignore[arg-type]
        f'{bad}: auth.token_url: required for type "oauth2"',
        f'{bad}: auth.authorize_url: type "oauth2" needs authorize_url, '
        "device_authorization_url or both",
        f"[plugin.connectors] dirs: {missing}: no such folder",
    ]


def test_the_doctor_hook_is_quiet_when_all_is_well(user_dir: Path, acme_toml: str) -> None:
    write(user_dir, "acme.toml", acme_toml)
    assert valetkey_connectors.valetkey_doctor(FakeKernel()) == []  # type: ignore[arg-type]


def test_the_registration_hook_uses_the_kernels_configuration(
    user_dir: Path, acme_toml: str
) -> None:
    write(user_dir, "acme.toml", acme_toml)
    registered: list[Any] = []
    valetkey_connectors.valetkey_register_connectors(registered.append, FakeKernel())
    assert len(registered) > 25  # defaults: the built-in catalog too
    registered.clear()
    kernel = FakeKernel(ConnectorsConfig(builtin=False))
    valetkey_connectors.valetkey_register_connectors(registered.append, kernel)
    assert [c.slug for c in registered] == ["acme"]


def test_an_invalid_table_falls_back_to_the_defaults_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = ConfigError(
        "[plugin.connectors]: unknown key 'builtn' (plugin 'connectors' knows: builtin, dirs)"
    )
    kernel = FakeKernel(error=error)  # the plugin keeps only a weak reference
    config_module.bind(kernel)
    caplog.set_level(logging.WARNING, logger="valetkey.connectors")
    assert config_module.current() == ConnectorsConfig()
    assert f"{error}; using the defaults" in caplog.messages


class _App:
    """Records lazy command registrations like cyclopts' ``App.command``."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def command(self, target: str, **kwargs: Any) -> None:
        self.commands.append((target, kwargs))


def test_the_command_is_registered_lazily() -> None:
    app = _App()
    valetkey_connectors.valetkey_register_commands(app, FakeKernel())  # type: ignore[arg-type]
    assert app.commands == [
        (
            "valetkey_connectors.cli:app",
            {"name": "connectors", "help": "List and inspect connectors."},
        )
    ]


def test_with_a_real_kernel(user_dir: Path, acme_toml: str, isolated: Path) -> None:
    """The kernel's catalog, doctor and config, end to end in-process."""
    from valetkey.kernel import load as load_kernel

    bad = write(user_dir, "broken.toml", "name = [")
    write(user_dir, "acme.toml", acme_toml)
    (isolated / "plugins.toml").write_text("[plugin.connectors]\nbuiltin = false\n")
    kernel = load_kernel()
    kernel.register_commands(_App())  # what the CLI does before running a command
    assert [c.slug for c in kernel.connectors] == ["acme"]
    assert kernel.connectors.get("acme").name == "Acme"
    problems = kernel.doctor()
    assert any(p.startswith(f"plugin 'connectors': {bad}: invalid TOML: ") for p in problems), (
        problems
    )
    assert load().sources["acme"] != BUILTIN
