"""The relay credential against a real Secret Service (gnome-keyring on a private D-Bus) and with
no keyring backend at all: round trip, fallback with a warning, rollback when the TOML write
fails, idempotent delete, and inconsistent states reported clearly."""

from __future__ import annotations

import errno
import stat
import uuid

import pytest

from valetkey_hookspecs import ConfigError, InvalidInput, NotFound
from valetkey_relay import credential
from valetkey_relay.credential import Credential, NotAttached, TokenMissing
from valetkey_relay.protocol import KEYRING_SERVICE


@pytest.fixture(
    params=[pytest.param("secret-service", marks=pytest.mark.keyring), "no-backend"],
)
def backend(request):
    """Which keyring the test runs with: the real Secret Service, or none."""
    if request.param == "secret-service":
        return request.getfixturevalue("secret_service")
    request.getfixturevalue("no_keyring")
    return None


@pytest.fixture
def relay_id():
    # unique per test: the private Secret Service lives for the whole session
    return f"rly_test{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cred(relay_id):
    return Credential(f"https://relay.example/relay/{relay_id}/", relay_id, "vkm_" + "t" * 43)


def _keyring_value(backend, relay_id):
    return backend.get_password(KEYRING_SERVICE, relay_id)


def test_round_trip(backend, cred, relay_id):
    result = credential.save(cred)
    loaded = credential.load()
    assert (loaded.relay_base_url, loaded.relay_id, loaded.machine_token) == (
        cred.relay_base_url,
        relay_id,
        cred.machine_token,
    )
    text = credential.path().read_text()
    if backend is None:
        assert result.stored_in == loaded.stored_in == "file"
        assert cred.machine_token in text
    else:
        assert result.stored_in == loaded.stored_in == "keyring"
        assert result.warning is None
        assert cred.machine_token not in text  # the token is only in the keyring
        assert _keyring_value(backend, relay_id) == cred.machine_token
    assert stat.S_IMODE(credential.path().stat().st_mode) == 0o600
    assert stat.S_IMODE(credential.path().parent.stat().st_mode) == 0o700
    assert "machine_token='" not in repr(loaded) and cred.machine_token not in repr(loaded)


def test_no_backend_falls_back_to_the_file_with_a_warning(no_keyring, cred):
    result = credential.save(cred)
    assert result.stored_in == "file"
    assert result.warning is not None
    assert "no usable OS keyring (NoKeyringError)" in result.warning
    assert str(credential.path()) in result.warning and "0600" in result.warning
    assert cred.machine_token not in result.warning
    assert credential.load().machine_token == cred.machine_token


def test_not_attached_is_a_not_found_and_distinct_from_io_errors(backend):
    with pytest.raises(NotAttached, match="not attached to a relay") as info:
        credential.load()
    assert isinstance(info.value, NotFound)
    credential.path().parent.mkdir(parents=True)
    credential.path().write_text("relay_id = [broken")
    with pytest.raises(ConfigError, match="is not valid TOML") as bad:
        credential.load()
    assert not isinstance(bad.value, NotAttached)
    credential.path().write_text('relay_base_url = "https://r.example/relay/a/"\n')
    with pytest.raises(ConfigError, match="lacks relay_base_url or relay_id"):
        credential.load()
    credential.path().write_text('relay_base_url = "https://r.example/relay/a/"\nrelay_id = "b"\n')
    with pytest.raises(ConfigError, match="does not match the URL"):
        credential.load()


@pytest.mark.keyring
def test_save_rolls_the_keyring_back_when_the_file_write_fails(
    secret_service, cred, relay_id, monkeypatch
):
    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(credential, "atomic_write", no_space)
    with pytest.raises(OSError, match="No space left"):
        credential.save(cred)
    assert _keyring_value(secret_service, relay_id) is None  # rolled back: no orphan entry
    assert not credential.path().exists()
    with pytest.raises(NotAttached):
        credential.load()


@pytest.mark.keyring
def test_a_failed_rotation_restores_the_previous_keyring_token(
    secret_service, cred, relay_id, monkeypatch
):
    credential.save(cred)
    rotated = Credential(cred.relay_base_url, relay_id, "vkm_" + "n" * 43)
    before = credential.path().read_bytes()

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(credential, "atomic_write", no_space)
    with pytest.raises(OSError, match="No space left"):
        credential.save(rotated)
    assert _keyring_value(secret_service, relay_id) == cred.machine_token
    assert credential.path().read_bytes() == before
    assert credential.load().machine_token == cred.machine_token


def test_no_rollback_is_needed_in_fallback_mode(no_keyring, cred, monkeypatch):
    monkeypatch.setattr(
        credential, "atomic_write", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone"))
    )
    with pytest.raises(OSError, match="disk gone"):
        credential.save(cred)
    assert not credential.path().exists()


def test_delete_is_idempotent(backend, cred, relay_id):
    assert credential.delete() is False  # nothing stored: not an error
    credential.save(cred)
    assert credential.delete() is True
    assert not credential.path().exists()
    if backend is not None:
        assert _keyring_value(backend, relay_id) is None
    assert credential.delete() is False
    with pytest.raises(NotAttached):
        credential.load()


def test_delete_removes_an_unreadable_file(backend):
    credential.path().parent.mkdir(parents=True)
    credential.path().write_text("garbage = [")
    assert credential.delete() is True
    assert not credential.path().exists()


@pytest.mark.keyring
def test_a_file_without_token_and_an_empty_keyring_is_reported(secret_service, cred, relay_id):
    credential.save(cred)
    secret_service.delete_password(KEYRING_SERVICE, relay_id)  # the keyring forgot it
    with pytest.raises(TokenMissing) as info:
        credential.load()
    message = str(info.value)
    assert f"names relay {relay_id!r}" in message
    assert "missing from the OS keyring" in message
    assert f"service {KEYRING_SERVICE!r}" in message
    assert "valetkey relay connect --force" in message
    assert not isinstance(info.value, NotAttached)


@pytest.mark.keyring
def test_a_keyring_token_with_the_keyring_gone_is_reported(
    secret_service, cred, relay_id, monkeypatch, tmp_path
):
    credential.save(cred)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus-here")
    with pytest.raises(TokenMissing, match="no OS keyring is usable now"):
        credential.load()


@pytest.mark.keyring
def test_the_keyring_wins_over_a_token_in_the_file(secret_service, cred, relay_id):
    credential.path().parent.mkdir(parents=True, mode=0o700)
    credential.path().write_text(
        f'relay_base_url = "{cred.relay_base_url}"\nrelay_id = "{relay_id}"\n'
        'machine_token = "vkm_stale_file_token"\n'
    )
    secret_service.set_password(KEYRING_SERVICE, relay_id, cred.machine_token)
    loaded = credential.load()
    assert (loaded.machine_token, loaded.stored_in) == (cred.machine_token, "keyring")
    secret_service.delete_password(KEYRING_SERVICE, relay_id)
    loaded = credential.load()
    assert (loaded.machine_token, loaded.stored_in) == ("vkm_stale_file_token", "file")


@pytest.mark.keyring
def test_saving_a_keyring_credential_drops_an_old_fallback_token(secret_service, cred):
    credential.path().parent.mkdir(parents=True, mode=0o700)
    credential.path().write_text(
        f'relay_base_url = "{cred.relay_base_url}"\nrelay_id = "{cred.relay_id}"\n'
        'machine_token = "vkm_old_fallback"\n'
    )
    credential.save(cred)
    assert "vkm_old_fallback" not in credential.path().read_text()


def test_revoke_keyring_entry_is_a_no_op_when_missing(backend, relay_id):
    assert credential.revoke_keyring_entry(relay_id) is None
    assert credential.revoke_keyring_entry(relay_id) is None


def test_save_validates_and_changes_nothing(backend, cred):
    bad = Credential("https://relay.example/relay/other/", cred.relay_id, cred.machine_token)
    with pytest.raises(InvalidInput, match="does not match the URL's relay id"):
        credential.save(bad)
    with pytest.raises(InvalidInput, match="machine token is empty"):
        credential.save(Credential(cred.relay_base_url, cred.relay_id, " "))
    assert not credential.path().exists()


def test_a_swapped_token_store_is_used(cred):
    class Memory:
        def __init__(self):
            self.values = {}

        def get(self, account):
            if account not in self.values:
                raise credential.TokenNotFound(account)
            return self.values[account]

        def set(self, account, token):
            self.values[account] = token

        def delete(self, account):
            self.values.pop(account, None)

    store = Memory()
    with credential.set_token_store(store):
        assert credential.save(cred).stored_in == "keyring"
        assert store.values == {cred.relay_id: cred.machine_token}
        assert credential.load().machine_token == cred.machine_token
    assert isinstance(credential.token_store(), credential.KeyringTokenStore)


@pytest.mark.keyring
def test_a_secret_service_that_fails_at_save_falls_back_with_a_warning(
    secret_service, cred, monkeypatch, tmp_path
):
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus-here")
    result = credential.save(cred)
    assert result.stored_in == "file"
    assert result.warning is not None
    assert result.warning.startswith("no usable OS keyring (SecretService Keyring ")
    assert cred.machine_token in credential.path().read_text()
    loaded = credential.load()
    assert (loaded.machine_token, loaded.stored_in) == (cred.machine_token, "file")
