"""The plugin as the kernel sees it: entry point, hooks, config schema, and the provider a
kernel builds from plugins.toml with ``$env`` references."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from valetkey_hookspecs.testing import PluginContract
from valetkey_oauth.config import ClientConfig, OAuthConfig
from valetkey_oauth.provider import OAuthProvider


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self):
        return "oauth"


def test_the_kernel_builds_the_provider_from_plugins_toml(tmp_path, monkeypatch):
    from valetkey.kernel import load

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # stevedore's cache
    monkeypatch.setenv("ACME_OAUTH_ID", "acme-client-id")
    monkeypatch.setenv("ACME_OAUTH_SECRET", "acme-client-secret-value")
    config = tmp_path / "plugins.toml"
    config.write_text(
        textwrap.dedent(
            """
            autoload = false
            enable = ["oauth"]

            [plugin.oauth]
            login_timeout = 120

            [plugin.oauth.clients.acme]
            client_id = { "$env" = "ACME_OAUTH_ID" }
            client_secret = { "$env" = "ACME_OAUTH_SECRET" }
            """
        )
    )
    kernel = load(config=config, home=tmp_path / "home")
    provider = kernel.credential_provider("oauth2")
    assert isinstance(provider, OAuthProvider)
    assert provider.config.login_timeout == 120
    assert provider.config.clients == {
        "acme": ClientConfig("acme-client-id", "acme-client-secret-value")
    }
    assert "acme-client-secret-value" not in repr(provider.config)


def test_unconfigured_plugin_builds_a_default_provider():
    from valetkey_oauth import build_provider

    class Ctx:
        plugin, config, kernel = "oauth", None, None

    provider = build_provider(Ctx())  # type: ignore[arg-type]
    assert provider.config == OAuthConfig()


def test_importing_the_plugin_does_not_import_httpx():
    code = "import sys, valetkey_oauth; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
