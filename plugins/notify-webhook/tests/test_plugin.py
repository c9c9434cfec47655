"""The plugin as valetkey loads it: PluginContract, config validation through the kernel's own
validate(), the factory, the doctor check, and a notification through a real kernel."""

from __future__ import annotations

import logging
import textwrap

import pytest

import valetkey_notify_webhook as plugin
from valetkey.config import validate
from valetkey.kernel import load
from valetkey_hookspecs import ConfigError, Notification, PluginContext
from valetkey_hookspecs.testing import PluginContract
from valetkey_notify_webhook import Config
from valetkey_notify_webhook.notifier import WebhookNotifier
from valetkey_notify_webhook.signing import verify_signature

SECRET = "whsec-config-test-secret-0123456789"
NAME = "notify-webhook"


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self):
        return NAME


def check(table):
    return validate(NAME, Config, table, base=None)


# --------------------------------------------------------------------------- config


def test_defaults_are_a_disabled_notifier():
    config = check(None)
    assert config == Config()
    assert (config.url, config.secret, config.events, config.headers) == ("", "", [], {})
    assert (config.timeout, config.max_attempts, config.backoff) == (10.0, 5, 0.5)
    assert config.max_backoff == 30.0
    assert not config.notifier().enabled


def test_a_full_table_with_an_env_secret(monkeypatch):
    monkeypatch.setenv("VALETKEY_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("HOOK_AUTH", "Bearer hook-auth-token-123")
    config = check(
        {
            "url": "https://hooks.example.com/valetkey/T0001/path-token",
            "secret": {"$env": "VALETKEY_WEBHOOK_SECRET"},
            "events": ["needs_reauth", "refresh_failed"],
            "timeout": 3,  # TOML integer for a float key
            "max_attempts": 2,
            "backoff": 1,
            "max_backoff": 10,
            "headers": {"Authorization": {"$env": "HOOK_AUTH"}, "X-Team": "ops"},
        }
    )
    assert config.secret == SECRET
    assert config.headers == {"Authorization": "Bearer hook-auth-token-123", "X-Team": "ops"}
    assert config.timeout == 3.0
    shown = repr(config) + repr(config.notifier())
    for hidden in (SECRET, "path-token", "hook-auth-token-123"):
        assert hidden not in shown
    assert "hooks.example.com" in repr(config.notifier())


def test_a_missing_env_secret_names_the_key():
    with pytest.raises(ConfigError) as caught:
        check({"url": "https://h.example", "secret": {"$env": "VK_TEST_UNSET_SECRET_VAR"}})
    assert str(caught.value) == (
        "[plugin.notify-webhook].secret: environment variable VK_TEST_UNSET_SECRET_VAR is not set"
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "ftp://files.example/x"}, "url: must be an https:// URL (got scheme 'ftp')"),
        ({"url": "hooks.example.com/x"}, "url: must be an https:// URL (got no scheme)"),
        ({"url": "https:///x"}, "url: has no host"),
        ({"url": "https://h.example:99999/"}, "url: the port is not a number from 0 to 65535"),
        (
            {"url": "http://hooks.example.com/x"},
            "url: plain http:// is only allowed to a loopback host "
            "(localhost, 127.0.0.1, ::1); use https:// for 'hooks.example.com'",
        ),
        ({"max_attempts": 0}, "max_attempts: must be at least 1 (got 0)"),
        ({"timeout": 0}, "timeout: must be greater than 0 seconds (got 0.0)"),
        ({"timeout": -1.5}, "timeout: must be greater than 0 seconds (got -1.5)"),
        ({"backoff": -1}, "backoff: must be 0 or more seconds (got -1.0)"),
        (
            {"backoff": 5, "max_backoff": 1},
            "max_backoff: must be at least backoff (5.0), got 1.0",
        ),
        ({"events": ["needs_reauth", " "]}, "events[1]: must be a non-empty event kind"),
        ({"headers": {"Bad Name": "x"}}, "headers: 'Bad Name' is not a valid header name"),
        (
            {"headers": {"x-valetkey-signature": "sha256=forged"}},
            "headers.x-valetkey-signature: is set by the plugin and cannot be overridden",
        ),
        (
            {"headers": {"Authorization": "Bearer a\r\nX-Evil: 1"}},
            "headers.Authorization: the value must be printable ASCII on one line",
        ),
    ],
)
def test_bad_values_name_the_key(table, message):
    with pytest.raises(ConfigError) as caught:
        check(table)
    assert str(caught.value) == f"[plugin.notify-webhook].{message}"


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"timeout": "fast"}, "[plugin.notify-webhook].timeout"),
        ({"max_attempts": 2.5}, "[plugin.notify-webhook].max_attempts"),
        ({"events": "needs_reauth"}, "[plugin.notify-webhook].events"),
        ({"retries": 3}, "unknown key 'retries'"),
    ],
)
def test_wrong_types_and_unknown_keys_name_the_key(table, fragment):
    with pytest.raises(ConfigError) as caught:
        check(table)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://127.1.2.3/hook",
        "http://localhost:9000/",
        "http://[::1]:9000/hook",
        "https://hooks.example.com/x?y=1",
    ],
)
def test_accepted_urls(url):
    assert check({"url": url}).notifier().enabled


def test_the_secret_never_reaches_a_config_error(monkeypatch):
    monkeypatch.setenv("VALETKEY_WEBHOOK_SECRET", SECRET)
    with pytest.raises(ConfigError) as caught:
        check({"secret": {"$env": "VALETKEY_WEBHOOK_SECRET"}, "max_attempts": 0})
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


# --------------------------------------------------------------------------- factory and doctor


class FakeKernel:
    def __init__(self, config=None, error=None):
        self.config, self.error = config, error

    def plugin_config(self, name):
        assert name == NAME
        if self.error:
            raise self.error
        return self.config


def test_the_factory_builds_a_notifier_from_the_config():
    config = Config(url="https://h.example/x", secret=SECRET, events=["needs_reauth"])
    registered = []
    plugin.valetkey_register_notifiers(
        lambda name, factory, **kw: registered.append((name, factory))
    )
    [(name, factory)] = registered
    assert name == "webhook"
    notifier = factory(PluginContext(plugin=NAME, config=config, kernel=FakeKernel(config)))
    assert isinstance(notifier, WebhookNotifier)
    assert notifier.wants("needs_reauth")
    assert not notifier.wants("refreshed")
    unconfigured = factory(PluginContext(plugin=NAME, config=None, kernel=FakeKernel()))
    assert not unconfigured.enabled


def test_doctor():
    doctor = plugin.valetkey_doctor
    assert doctor(FakeKernel(Config())) is None  # disabled: nothing to say
    assert doctor(FakeKernel(error=ConfigError("bad"))) is None  # reported by config checks
    assert doctor(FakeKernel(Config(url="https://h.example", secret=SECRET))) is None
    [unsigned] = doctor(FakeKernel(Config(url="https://h.example")))
    assert unsigned.startswith("[plugin.notify-webhook].secret is empty: deliveries are not signed")
    [short] = doctor(FakeKernel(Config(url="https://h.example", secret="short")))
    assert "shorter than 16 characters" in short
    assert "short" not in short.replace("shorter", "")


# --------------------------------------------------------------------------- through the kernel


@pytest.mark.anyio
async def test_a_kernel_delivers_and_logs_a_refusal(receiver, tmp_path, monkeypatch, caplog):
    for var in ("VALETKEY_PLUGINS", "VALETKEY_DISABLE_PLUGINS", "VALETKEY_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VALETKEY_WEBHOOK_SECRET", SECRET)
    config = tmp_path / "plugins.toml"
    config.write_text(
        textwrap.dedent(f"""
            autoload = false
            enable = ["notify-webhook"]

            [plugin.notify-webhook]
            url = "{receiver.url}"
            secret = {{ "$env" = "VALETKEY_WEBHOOK_SECRET" }}
            events = ["needs_reauth"]
            backoff = 0.01
        """)
    )
    kernel = load(config=config, home=tmp_path / "home")
    assert kernel.doctor() == []
    [notifier] = kernel.notifiers
    assert notifier.name == "webhook"
    try:
        await kernel.notify(
            Notification(kind="needs_reauth", message="reconnect github", connection_id="c1")
        )
        await kernel.notify(Notification(kind="refreshed", message="fine"))
        await kernel.drain_notifications()  # notify() returns at once; deliveries run behind
        [request] = receiver.requests
        verify_signature(SECRET, request.headers, request.body)
        assert request.json()["connection_id"] == "c1"

        receiver.answer(403)
        caplog.set_level(logging.DEBUG)
        await kernel.notify(Notification(kind="needs_reauth", message="again"))  # no raise
        await kernel.drain_notifications()
    finally:
        await kernel.aclose()  # drains and closes the notifier's HTTP client
    failures = [r.getMessage() for r in caplog.records if r.name.startswith("valetkey.kernel")]
    assert any(
        "notifier webhook failed for needs_reauth: DeliveryError:" in m and "HTTP 403" in m
        for m in failures
    )
    assert all(SECRET not in r.getMessage() for r in caplog.records)
