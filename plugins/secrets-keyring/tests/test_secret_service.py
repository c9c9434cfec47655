"""The store against a real Secret Service (gnome-keyring on a private D-Bus session bus)."""

from __future__ import annotations

import logging
import uuid

import pytest

from valetkey_hookspecs import ConfigError
from valetkey_hookspecs.testing import SecretStoreContract
from valetkey_secrets_keyring.config import KeyringConfig
from valetkey_secrets_keyring.filestore import EncryptedFileStore
from valetkey_secrets_keyring.store import KeyringSecretStore, open_secret_store

pytestmark = pytest.mark.keyring


@pytest.fixture
def service() -> str:
    return f"valetkey-test-{uuid.uuid4().hex[:8]}"


class TestSecretService(SecretStoreContract):
    @pytest.fixture
    def secret_store(self, secret_service, tmp_path, service):
        store = open_secret_store(KeyringConfig(service=service, backend="keyring"), tmp_path)
        assert isinstance(store, KeyringSecretStore)
        return store


def test_auto_picks_the_secret_service_without_a_warning(
    secret_service, tmp_path, service, plugin_log
):
    store = open_secret_store(KeyringConfig(service=service), tmp_path)
    assert isinstance(store, KeyringSecretStore)
    assert store.description == f"OS keyring SecretService Keyring (service {service!r})"
    assert plugin_log.messages(logging.WARNING) == []
    store.set("kek-ring", "in-the-keyring")
    assert not (tmp_path / "secrets").exists()  # nothing written to the fallback folder
    store.delete("kek-ring")


def test_values_really_go_to_the_secret_service(secret_service, tmp_path, service):
    store = open_secret_store(KeyringConfig(service=service), tmp_path)
    store.set("machine-token", "mt-0123456789")
    try:
        # read back through secretstorage directly, not through keyring or the store
        import secretstorage

        with secretstorage.dbus_init() as bus:
            collection = secretstorage.get_default_collection(bus)
            items = list(collection.search_items({"service": service, "username": "machine-token"}))
            assert [item.get_secret() for item in items] == [b"mt-0123456789"]
    finally:
        store.delete("machine-token")
    assert secret_service.get_password(service, "machine-token") is None


def test_the_service_name_separates_installations(secret_service, tmp_path, service):
    one = open_secret_store(KeyringConfig(service=service), tmp_path)
    two = open_secret_store(KeyringConfig(service=service + "-other"), tmp_path)
    one.set("kek-ring", "ring-one")
    try:
        assert two.get("kek-ring") is None
        two.set("kek-ring", "ring-two")
        assert one.get("kek-ring") == "ring-one"
    finally:
        one.delete("kek-ring")
        two.delete("kek-ring")


def test_auto_reads_through_to_the_fallback_files(secret_service, tmp_path, service):
    EncryptedFileStore(tmp_path / "secrets").set("kek-ring", "written-while-headless")
    store = open_secret_store(KeyringConfig(service=service), tmp_path)
    assert isinstance(store, KeyringSecretStore)
    assert store.get("kek-ring") == "written-while-headless"
    store.set("kek-ring", "now-in-the-keyring")
    try:
        assert secret_service.get_password(service, "kek-ring") == "now-in-the-keyring"
    finally:
        store.delete("kek-ring")
    assert store.get("kek-ring") is None


def test_a_dead_bus_falls_back_or_is_a_config_error(
    secret_service, tmp_path, service, monkeypatch, plugin_log
):
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus-here")
    store = open_secret_store(KeyringConfig(service=service), tmp_path)
    assert isinstance(store, EncryptedFileStore)
    (warning,) = plugin_log.messages(logging.WARNING)
    assert warning.startswith("no OS keyring available (SecretService Keyring ")
    assert str(tmp_path / "secrets") in warning
    with pytest.raises(ConfigError, match="no OS keyring is usable"):
        open_secret_store(KeyringConfig(service=service, backend="keyring"), tmp_path)
