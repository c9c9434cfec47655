"""A session without the OS keyring (backend "auto" falls back to the files) must not make a
second KEK ring: sealer-local refuses, naming the fallback and where the ring was saved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import valetkey_secrets_keyring
from valetkey_hookspecs import ConfigError, PluginContext
from valetkey_secrets_keyring.filestore import EncryptedFileStore
from valetkey_secrets_keyring.store import KeyringSecretStore

valetkey_sealer_local = pytest.importorskip("valetkey_sealer_local")


class _Memory:
    priority = 5
    name = "Memory Keyring"

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.data.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.data[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        if self.data.pop((service, username), None) is None:
            raise PasswordDeleteError("missing")


class _NoDBus:
    priority = 5
    name = "SecretService Keyring"

    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("org.freedesktop.DBus.Error.ServiceUnknown: no D-Bus session")


@dataclass
class _Kernel:
    """Just enough of the kernel for the two plugins' factories."""

    home: Path
    secret_store: Any = None


def _session(home: Path) -> tuple[Any, Any]:
    """A 'process': the secret store and the sealer as the kernel builds them."""
    kernel = _Kernel(home)
    kernel.secret_store = valetkey_secrets_keyring._factory(
        PluginContext(plugin="secrets-keyring", config=None, kernel=kernel)
    )
    sealer = valetkey_sealer_local._factory(
        PluginContext(plugin="sealer-local", config=None, kernel=kernel)
    )
    return kernel.secret_store, sealer


def test_a_session_without_the_os_keyring_does_not_make_a_second_ring(tmp_path, monkeypatch):
    import keyring

    monkeypatch.delenv("VALETKEY_KEK", raising=False)
    memory = _Memory()
    monkeypatch.setattr(keyring, "get_keyring", lambda: memory)
    store, sealer = _session(tmp_path)
    assert isinstance(store, KeyringSecretStore)
    sealed = sealer.seal(b"token", b"cred_1")

    monkeypatch.setattr(keyring, "get_keyring", lambda: _NoDBus())  # ssh, no D-Bus session
    fallback, session = _session(tmp_path)
    assert isinstance(fallback, EncryptedFileStore)
    ids = tmp_path / "kek-ids.json"
    expected = (
        f"the KEK ring 'kek-ring' is missing from encrypted files in {tmp_path / 'secrets'} (no "
        "OS keyring: SecretService Keyring failed at first use: RuntimeError: "
        "org.freedesktop.DBus.Error.ServiceUnknown: no D-Bus session), but this vault has keys "
        f"{sealed.key_id} ({ids}), last saved to OS keyring Memory Keyring (service 'valetkey'): "
        "is the OS keyring unavailable in this session? Set [plugin.secrets-keyring] backend = "
        '"keyring" to fail instead of falling back, or restore the ring; VALETKEY_KEK can supply '
        "a key. Not making a new ring, which would leave the records sealed under those keys "
        f"unreadable (to give them up and start afresh, delete {ids})"
    )
    for action in (lambda: session.seal(b"other", b"cred_2"), session.key_ids):
        with pytest.raises(ConfigError) as info:
            action()
        assert str(info.value) == expected
    assert not fallback.has_entries()
    assert not fallback.key_path.exists()

    monkeypatch.setattr(keyring, "get_keyring", lambda: memory)  # the keyring is back
    _, again = _session(tmp_path)
    assert again.open(sealed, b"cred_1") == b"token"
