"""The built-in catalog: the conformance kit over every connector, the providers the issue names,
the plugin's registration, the README's table, and the plugin's light import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import valetkey_connectors
from valetkey_connectors import schema
from valetkey_connectors.config import ConnectorsConfig
from valetkey_connectors.loader import BUILTIN, builtin, load, parse_text
from valetkey_connectors.render import catalog_markdown, connector_to_dict, rate_text
from valetkey_hookspecs import AuthType, Connector, RateProfile
from valetkey_hookspecs.testing import ConnectorContract, PluginContract
from valetkey_hookspecs.testing import connector as kit

PLUGIN_DIR = Path(__file__).resolve().parents[1]
CATALOG_DIR = PLUGIN_DIR / "src" / "valetkey_connectors" / "catalog"

OAUTH2, API_KEY = AuthType.OAUTH2, AuthType.API_KEY
#: the providers issue 3 asks for, with their auth type
NAMED = {
    "github": OAUTH2,
    "gitlab": OAUTH2,
    "google": OAUTH2,
    "microsoft": OAUTH2,
    "slack": OAUTH2,
    "notion": OAUTH2,
    "linear": OAUTH2,
    "atlassian": OAUTH2,
    "dropbox": OAUTH2,
    "discord": OAUTH2,
    "zoom": OAUTH2,
    "hubspot": OAUTH2,
    "salesforce": OAUTH2,
    "stripe": API_KEY,
    "openai": API_KEY,
    "anthropic": API_KEY,
    "gemini": API_KEY,
    "mistral": API_KEY,
    "brave-search": API_KEY,
    "sentry": API_KEY,
    "datadog": API_KEY,
    "vercel": API_KEY,
    "alpaca": API_KEY,
    "binance": API_KEY,
    "coinbase": OAUTH2,
}


def catalog() -> dict[str, Connector]:
    connectors, problems = builtin()
    assert problems == ()
    return {c.slug: c for c in connectors}


class TestBuiltinCatalog(ConnectorContract):
    @pytest.fixture
    def connectors(self) -> list[Connector]:
        return list(catalog().values())


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self) -> str:
        return "connectors"


@pytest.mark.parametrize(("slug", "auth_type"), NAMED.items())
def test_each_named_provider_is_in_the_catalog(slug: str, auth_type: AuthType) -> None:
    connector = catalog()[slug]
    assert connector.auth.type is auth_type
    assert connector.injection is not None and connector.injection.env_var
    assert connector.rate is not None
    assert connector.docs_url and connector.docs_url.startswith("https://")
    assert connector.description


def test_the_catalog_spans_both_auth_types_with_at_least_25_providers() -> None:
    kinds = [c.auth.type for c in catalog().values()]
    assert len(kinds) >= 25
    assert kinds.count(OAUTH2) >= 10 and kinds.count(API_KEY) >= 10


def test_every_file_names_its_own_slug_and_documents_its_rate() -> None:
    files = sorted(CATALOG_DIR.glob("*.toml"))
    assert [f.stem for f in files] == sorted(catalog())
    for path in files:
        text = path.read_text()
        assert f'slug = "{path.stem}"' in text, path.name
        # the rate profile says where its figure comes from, in a comment just above it
        before_rate = text.split("[rate]")[0].rstrip().splitlines()[-1]
        assert before_rate.startswith("#"), f"{path.name}: explain the rate profile's source"
        assert re.search(r"(?i)published|conservative", text.split("[rate]")[0]), path.name


def test_oauth2_connectors_refresh_and_device_flows_are_where_expected() -> None:
    c = catalog()
    assert c["github"].auth.device_authorization_url == "https://github.com/login/device/code"
    assert c["github"].auth.token_url == "https://github.com/login/oauth/access_token"
    assert c["microsoft"].auth.device_authorization_url == (
        "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode"
    )
    assert "offline_access" in c["microsoft"].auth.scopes
    assert c["google"].auth.extra_authorize_params == {
        "access_type": "offline",
        "prompt": "consent",
    }
    assert c["atlassian"].auth.extra_authorize_params["audience"] == "api.atlassian.com"
    assert c["notion"].auth.client_auth == "basic"
    # only hosts that take the token: never all of *.githubusercontent.com
    github = c["github"].injection
    assert github is not None
    assert "api.github.com" in github.hosts
    assert not any(h.endswith("githubusercontent.com") and h.startswith("*") for h in github.hosts)


def test_two_header_api_keys_place_the_secret_in_an_added_header() -> None:
    c = catalog()
    datadog, alpaca, anthropic = (c[s].injection for s in ("datadog", "alpaca", "anthropic"))
    assert datadog is not None and alpaca is not None and anthropic is not None
    assert (datadog.header, datadog.format) == ("DD-API-KEY", "{token}")
    assert datadog.add_headers == {"DD-APPLICATION-KEY": "{secret}"}
    assert (alpaca.header, alpaca.add_headers) == (
        "APCA-API-KEY-ID",
        {"APCA-API-SECRET-KEY": "{secret}"},
    )
    assert (anthropic.header, anthropic.format) == ("x-api-key", "{token}")
    assert anthropic.add_headers == {"anthropic-version": "2023-06-01"}
    assert c["gemini"].injection is not None
    assert c["gemini"].injection.header == "x-goog-api-key"
    assert c["brave-search"].injection is not None
    assert c["brave-search"].injection.header == "X-Subscription-Token"
    assert "sign" in c["binance"].description  # says request signing is not done


def test_the_loader_uses_the_conformance_kits_rules() -> None:
    assert schema.SLUG.pattern == kit.SLUG.pattern
    assert schema.HEADER.pattern == kit.HEADER.pattern
    assert schema.HOST_PATTERN.pattern == kit.HOST_PATTERN.pattern
    assert schema.ENV_VAR.pattern == kit.ENV_VAR.pattern


class FakeKernel:
    """Only what the plugin asks of a kernel: its (absent) config table."""

    def plugin_config(self, plugin: str) -> Any:
        return None


def test_the_registration_hook_registers_the_catalog() -> None:
    registered: list[Connector] = []
    valetkey_connectors.valetkey_register_connectors(registered.append, FakeKernel())
    assert [c.slug for c in registered] == [c.slug for c in builtin()[0]]
    assert all(c.slug in load().sources and load().sources[c.slug] == BUILTIN for c in registered)


def test_the_builtin_catalog_can_be_turned_off() -> None:
    assert load(ConnectorsConfig(builtin=False)).connectors == {}


def test_the_readme_table_matches_the_catalog() -> None:
    readme = (PLUGIN_DIR / "README.md").read_text()
    table = catalog_markdown(catalog().values())
    assert table in readme, (
        "README's catalog table is stale; regenerate it with: uv run python -c "
        '"from valetkey_connectors.loader import builtin; '
        "from valetkey_connectors.render import catalog_markdown; "
        'print(catalog_markdown(builtin()[0]))"'
    )


def test_rendering_of_rates_and_json() -> None:
    assert rate_text(RateProfile(5000, 3600)) == "5000/h"
    assert rate_text(RateProfile(60, 60)) == "60/min"
    assert rate_text(RateProfile(3, 1)) == "3/s"
    assert rate_text(RateProfile(100, 10)) == "100/10s"
    assert rate_text(None) == "-"
    stripe = connector_to_dict(catalog()["stripe"], BUILTIN)
    assert stripe["auth"] == {
        "type": "api_key",
        "authorize_url": None,
        "token_url": None,
        "device_authorization_url": None,
        "revocation_url": None,
        "scopes": [],
        "pkce": None,
        "client_auth": None,
        "extra_authorize_params": {},
    }
    assert stripe["source"] == "built-in"
    assert stripe["rate"] == {"requests": 25, "per_seconds": 1.0}


def test_importing_the_plugin_reads_and_parses_nothing() -> None:
    code = (
        "import sys, valetkey_connectors\n"
        "heavy = [m for m in ('tomllib', 'msgspec', 'cyclopts', 'valetkey',"
        " 'valetkey_connectors.loader', 'valetkey_connectors.schema',"
        " 'valetkey_connectors.cli') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_root_help_registers_the_command_without_loading_the_catalog(isolated: Path) -> None:
    code = (
        "import sys\n"
        "from valetkey.cli.main import main\n"
        "assert main(['--help']) == 0\n"
        "assert 'valetkey_connectors' in sys.modules\n"
        "assert 'valetkey_connectors.loader' not in sys.modules\n"
        "assert 'valetkey_connectors.cli' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "connectors" in result.stdout and "List and inspect connectors." in result.stdout


def test_the_readme_examples_are_valid_connector_files() -> None:
    readme = (PLUGIN_DIR / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    examples = [b for b in blocks if "[auth]" in b]
    assert len(examples) == 2
    parsed = [parse_text(b, "README.md", default_slug="example") for b in examples]
    assert [c.auth.type for c in parsed] == [OAUTH2, API_KEY]
    assert parsed[1].injection is not None
    assert parsed[1].injection.add_headers == {"X-Acme-Secret": "{secret}"}


def test_providers_that_join_scopes_with_commas_say_so():
    from valetkey_connectors.loader import builtin

    connectors, problems = builtin()
    assert problems == ()
    by_slug = {c.slug: c for c in connectors}
    assert by_slug["slack"].auth.scope_separator == ","
    assert by_slug["linear"].auth.scope_separator == ","
    assert by_slug["github"].auth.scope_separator == " "
