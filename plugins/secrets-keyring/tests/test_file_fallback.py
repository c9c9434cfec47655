"""The encrypted-file store, on its own and as the fallback when keyring has no backend."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from valetkey_hookspecs import ConfigError, SealError, SecretStore
from valetkey_hookspecs.testing import SecretStoreContract
from valetkey_secrets_keyring.config import KeyringConfig
from valetkey_secrets_keyring.filestore import EncryptedFileStore, entry_name
from valetkey_secrets_keyring.store import KeyringSecretStore, find_keyring, open_secret_store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestFallbackWithNoKeyring(SecretStoreContract):
    """backend = "auto" on a machine where keyring has no backend (fail.Keyring)."""

    @pytest.fixture
    def secret_store(self, tmp_path, no_keyring):
        store = open_secret_store(KeyringConfig(), tmp_path)
        assert isinstance(store, EncryptedFileStore)
        return store


class TestFileBackend(SecretStoreContract):
    """backend = "file": always the encrypted files, whatever keyring has."""

    @pytest.fixture
    def secret_store(self, tmp_path):
        store = open_secret_store(KeyringConfig(backend="file"), tmp_path)
        assert isinstance(store, EncryptedFileStore)
        return store


def test_the_fallback_warns_once_saying_where_and_why(tmp_path, no_keyring, plugin_log):
    store = open_secret_store(KeyringConfig(), tmp_path)
    warnings = plugin_log.messages(logging.WARNING)
    assert warnings == [
        f"no OS keyring available (NoKeyringError): secrets are stored encrypted in "
        f"{tmp_path / 'secrets'}"
    ]
    assert "\n" not in warnings[0]
    assert "NoKeyringError" in store.description
    assert str(tmp_path / "secrets") in store.description


def test_backend_file_does_not_warn(tmp_path, no_keyring, plugin_log):
    store = open_secret_store(KeyringConfig(backend="file"), tmp_path)
    assert plugin_log.messages(logging.WARNING) == []
    assert store.description == f"encrypted files in {tmp_path / 'secrets'}"


def test_backend_keyring_without_a_keyring_is_a_config_error(tmp_path, no_keyring):
    with pytest.raises(ConfigError) as info:
        open_secret_store(KeyringConfig(backend="keyring"), tmp_path)
    message = str(info.value)
    assert 'backend = "keyring"' in message
    assert "NoKeyringError" in message
    assert not (tmp_path / "secrets").exists()


def test_the_keyring_env_variable_can_force_the_fail_backend(tmp_path, monkeypatch):
    import keyring.core

    monkeypatch.setattr(keyring.core, "_keyring_backend", None)  # detect again, then restore
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    store = open_secret_store(KeyringConfig(), tmp_path)
    assert isinstance(store, EncryptedFileStore)
    assert "NoKeyringError" in store.description


def test_files_and_folder_are_private(tmp_path, no_keyring):
    store = open_secret_store(KeyringConfig(), tmp_path)
    store.set("kek-ring", "value-1")
    store.set("machine-token", "value-2")
    folder = tmp_path / "secrets"
    assert _mode(folder) == 0o700
    assert _mode(folder / "file.key") == 0o600
    assert (folder / "file.key").stat().st_size == 32
    for key in ("kek-ring", "machine-token"):
        assert _mode(folder / entry_name(key)) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["file.key", entry_name("kek-ring"), entry_name("machine-token")]
    )  # no temp file left behind


def test_an_existing_folder_with_loose_permissions_is_tightened(tmp_path):
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    EncryptedFileStore(folder).set("k", "v")
    assert _mode(folder) == 0o700


def test_no_plaintext_value_or_key_name_in_any_file(tmp_path, no_keyring):
    store = open_secret_store(KeyringConfig(), tmp_path)
    values = {
        "kek-ring": '{"current": "abc", "keys": {"abc": "c2VjcmV0LWtlay1ieXRlcw=="}}',
        "relay-machine-token": "mt_live_4f9a1c2b3d4e5f60718293a4b5c6d7e8",
        "ünïcode": "pässwörd-✓-鍵",
    }
    for key, value in values.items():
        store.set(key, value)
    blobs = [p.read_bytes() for p in (tmp_path / "secrets").rglob("*") if p.is_file()]
    assert len(blobs) == 4
    for key, value in values.items():
        for blob in blobs:
            assert value.encode() not in blob
            assert key.encode() not in blob
        assert store.get(key) == value


def test_get_of_a_missing_entry_creates_nothing(tmp_path):
    store = EncryptedFileStore(tmp_path / "secrets")
    assert store.get("nothing") is None
    store.delete("nothing")
    assert not (tmp_path / "secrets" / "file.key").exists()


def test_a_new_file_key_does_not_replace_an_existing_one(tmp_path):
    folder = tmp_path / "secrets"
    EncryptedFileStore(folder).set("a", "one")
    key = (folder / "file.key").read_bytes()
    other = EncryptedFileStore(folder)
    other.set("b", "two")  # a second instance (another process) reuses the key
    assert (folder / "file.key").read_bytes() == key
    assert EncryptedFileStore(folder).get("a") == "one"
    assert EncryptedFileStore(folder).get("b") == "two"


def test_a_replaced_file_key_is_a_clear_error(tmp_path):
    folder = tmp_path / "secrets"
    EncryptedFileStore(folder).set("kek-ring", "value-that-must-not-leak")
    key_file = folder / "file.key"
    key_file.chmod(0o600)
    key_file.write_bytes(os.urandom(32))
    with pytest.raises(SealError) as info:
        EncryptedFileStore(folder).get("kek-ring")
    message = str(info.value)
    assert "'kek-ring'" in message
    assert str(key_file) in message
    assert "value-that-must-not-leak" not in message


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_file_key_of_the_wrong_length_is_a_config_error(tmp_path, size):
    folder = tmp_path / "secrets"
    EncryptedFileStore(folder).set("kek-ring", "v")
    (folder / "file.key").write_bytes(b"k" * size)
    with pytest.raises(ConfigError) as info:
        EncryptedFileStore(folder).get("kek-ring")
    assert f"holds {size} bytes" in str(info.value)
    assert str(folder / "file.key") in str(info.value)


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o666])
def test_a_file_key_readable_by_others_is_a_config_error(tmp_path, mode):
    folder = tmp_path / "secrets"
    EncryptedFileStore(folder).set("kek-ring", "v")
    (folder / "file.key").chmod(mode)
    with pytest.raises(ConfigError) as info:
        EncryptedFileStore(folder).get("kek-ring")
    assert f"{mode:04o}" in str(info.value)
    assert "chmod 600" in str(info.value)
    with pytest.raises(ConfigError):
        EncryptedFileStore(folder).set("other", "v")


def test_a_missing_file_key_with_entries_is_a_config_error(tmp_path):
    folder = tmp_path / "secrets"
    EncryptedFileStore(folder).set("kek-ring", "v")
    (folder / "file.key").unlink()
    with pytest.raises(ConfigError, match="is missing"):
        EncryptedFileStore(folder).get("kek-ring")
    with pytest.raises(ConfigError, match="is missing"):
        EncryptedFileStore(folder).set("other", "v")  # never a new key over old entries


def test_a_corrupted_or_moved_entry_is_a_seal_error(tmp_path):
    folder = tmp_path / "secrets"
    store = EncryptedFileStore(folder)
    store.set("a", "value-a")
    store.set("b", "value-b")
    # an entry copied over another key's file does not open as that key (key = associated data)
    (folder / entry_name("b")).write_bytes((folder / entry_name("a")).read_bytes())
    with pytest.raises(SealError, match="'b'"):
        store.get("b")
    (folder / entry_name("a")).write_bytes(b"\x01short")
    with pytest.raises(SealError, match="corrupted"):
        store.get("a")


class _Boom:
    """A keyring backend that is recommended but breaks at first use."""

    priority = 5
    name = "Boom Keyring"

    def get_password(self, service, username):
        raise RuntimeError("org.freedesktop.DBus.Error.ServiceUnknown: no Secret Service\nmore")


def test_a_backend_error_at_first_use_falls_back(tmp_path, monkeypatch, plugin_log):
    import keyring

    monkeypatch.setattr(keyring, "get_keyring", lambda: _Boom())
    store = open_secret_store(KeyringConfig(), tmp_path)
    assert isinstance(store, EncryptedFileStore)
    (warning,) = plugin_log.messages(logging.WARNING)
    assert "Boom Keyring failed at first use: RuntimeError: org.freedesktop" in warning
    assert "\n" not in warning


def test_a_chainer_with_no_backends_falls_back(tmp_path, monkeypatch):
    import keyring.core
    from keyring.backends import chainer

    monkeypatch.setattr(chainer.ChainerBackend, "backends", [], raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(chainer.ChainerBackend())
    backend, reason = find_keyring("valetkey")
    assert backend is None
    assert "chainer" in reason
    assert isinstance(open_secret_store(KeyringConfig(), tmp_path), EncryptedFileStore)


def test_a_keyring_that_keyring_does_not_recommend_is_not_accepted(tmp_path, monkeypatch):
    """Like keyrings.alt's PlaintextKeyring (priority 0.5): a backend below priority 1 stores
    values in the clear, so the encrypted files are used instead."""
    import keyring.backend
    import keyring.core

    class PlaintextLike(keyring.backend.KeyringBackend):
        priority = 0.5

        def get_password(self, service, username):
            return None

        def set_password(self, service, username, password):
            raise AssertionError("must not be written to")

        def delete_password(self, service, username):
            return None

    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(PlaintextLike())
    store = open_secret_store(KeyringConfig(), tmp_path)
    assert isinstance(store, EncryptedFileStore)
    assert "not a recommended" in store.description


def test_a_file_key_written_while_keyring_was_missing_is_read_through(tmp_path, monkeypatch):
    """A machine that gains a keyring keeps reading what the fallback holds (the KEK ring)."""
    EncryptedFileStore(tmp_path / "secrets").set("kek-ring", "ring-from-the-fallback")

    class Memory:
        priority = 5
        name = "Memory Keyring"

        def __init__(self):
            self.data = {}

        def get_password(self, service, username):
            return self.data.get((service, username))

        def set_password(self, service, username, password):
            self.data[(service, username)] = password

        def delete_password(self, service, username):
            from keyring.errors import PasswordDeleteError

            if self.data.pop((service, username), None) is None:
                raise PasswordDeleteError("missing")

    import keyring

    memory = Memory()
    monkeypatch.setattr(keyring, "get_keyring", lambda: memory)
    store = open_secret_store(KeyringConfig(), tmp_path)
    assert isinstance(store, KeyringSecretStore)
    assert store.get("kek-ring") == "ring-from-the-fallback"
    store.set("kek-ring", "ring-in-the-keyring")
    assert store.get("kek-ring") == "ring-in-the-keyring"
    store.delete("kek-ring")
    assert store.get("kek-ring") is None  # deleted from both
    store.delete("kek-ring")


def test_description_is_a_read_only_property(tmp_path):
    class Quiet:
        priority = 5
        name = "Quiet Keyring"

        def get_password(self, service, username):
            raise AssertionError("isinstance or description must not reach the keyring")

    stores = [
        EncryptedFileStore(tmp_path / "secrets", reason="NoKeyringError"),
        KeyringSecretStore(Quiet(), "svc"),
    ]
    for store in stores:
        assert isinstance(store, SecretStore)
        assert store.description
        with pytest.raises(AttributeError):
            store.description = "elsewhere"
    assert stores[0].description.endswith("(no OS keyring: NoKeyringError)")
    assert stores[1].description == "OS keyring Quiet Keyring (service 'svc')"
