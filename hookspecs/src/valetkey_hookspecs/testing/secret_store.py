"""SecretStoreContract: what every secret store (``valetkey_register_secret_stores``) must do.

Subclass it and override the ``secret_store`` fixture::

    class TestMyStore(SecretStoreContract):
        @pytest.fixture
        def secret_store(self, tmp_path):
            return MyStore(tmp_path)

Every test writes under fresh, unique key names and deletes them afterwards, so the contract can
run against a real, shared backend (an OS keyring) without leaving entries behind or tripping
over earlier runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from ..interfaces import SecretStore

#: a value of exactly 4 KiB (the size of a big JSON key ring or a long refresh token)
_BIG_VALUE = ("0123456789abcdef" * 256)[:4096]
_UNICODE_VALUE = "pässwörd ✓ 鍵 🔑 \n\ttab and newline"


class SecretStoreContract:
    """Subclass and override ``secret_store`` to return the store under test."""

    @pytest.fixture
    def secret_store(self) -> SecretStore:
        raise NotImplementedError(
            "subclass SecretStoreContract and override the 'secret_store' fixture to return "
            "the SecretStore under test"
        )

    @pytest.fixture
    def new_key(self, secret_store: SecretStore) -> Iterator[Callable[[str], str]]:
        """``new_key("name")``: a key name unique to this test run; deleted at teardown."""
        run = uuid.uuid4().hex[:12]
        made: list[str] = []

        def make(name: str) -> str:
            key = f"valetkey-contract-{run}-{name}"
            made.append(key)
            return key

        yield make
        for key in made:
            secret_store.delete(key)

    def test_matches_the_protocol(self, secret_store: SecretStore) -> None:
        assert isinstance(secret_store, SecretStore)

    def test_description_is_a_non_empty_string(self, secret_store: SecretStore) -> None:
        assert isinstance(secret_store.description, str)
        assert secret_store.description.strip()

    def test_set_then_get_round_trips(
        self, secret_store: SecretStore, new_key: Callable[[str], str]
    ) -> None:
        key = new_key("plain")
        secret_store.set(key, "s3cr3t-value")
        assert secret_store.get(key) == "s3cr3t-value"

    def test_unicode_key_and_value_round_trip(
        self, secret_store: SecretStore, new_key: Callable[[str], str]
    ) -> None:
        key = new_key("ünïcode-鍵")
        secret_store.set(key, _UNICODE_VALUE)
        assert secret_store.get(key) == _UNICODE_VALUE

    def test_a_4_kib_value_round_trips(
        self, secret_store: SecretStore, new_key: Callable[[str], str]
    ) -> None:
        key = new_key("big")
        secret_store.set(key, _BIG_VALUE)
        assert secret_store.get(key) == _BIG_VALUE

    def test_set_overwrites(self, secret_store: SecretStore, new_key: Callable[[str], str]) -> None:
        key = new_key("overwrite")
        secret_store.set(key, "first")
        secret_store.set(key, "second")
        assert secret_store.get(key) == "second"

    def test_get_of_a_missing_key_is_none(
        self, secret_store: SecretStore, new_key: Callable[[str], str]
    ) -> None:
        assert secret_store.get(new_key("never-set")) is None

    def test_delete_removes_the_entry(
        self, secret_store: SecretStore, new_key: Callable[[str], str]
    ) -> None:
        key = new_key("deleted")
        secret_store.set(key, "gone-soon")
        secret_store.delete(key)
        assert secret_store.get(key) is None

    def test_delete_of_a_missing_entry_is_not_an_error(
        self, secret_store: SecretStore, new_key: Callable[[str], str]
    ) -> None:
        key = new_key("never-there")
        secret_store.delete(key)
        key2 = new_key("deleted-twice")
        secret_store.set(key2, "v")
        secret_store.delete(key2)
        secret_store.delete(key2)
        assert secret_store.get(key2) is None

    def test_keys_are_independent(
        self, secret_store: SecretStore, new_key: Callable[[str], str]
    ) -> None:
        a, b = new_key("a"), new_key("b")
        secret_store.set(a, "value-a")
        secret_store.set(b, "value-b")
        assert (secret_store.get(a), secret_store.get(b)) == ("value-a", "value-b")
        secret_store.set(a, "value-a2")
        assert secret_store.get(b) == "value-b"
        secret_store.delete(a)
        assert secret_store.get(a) is None
        assert secret_store.get(b) == "value-b"

    def test_values_never_appear_in_repr_or_str(
        self, secret_store: SecretStore, new_key: Callable[[str], str]
    ) -> None:
        value = f"do-not-print-{uuid.uuid4().hex}"
        key = new_key("hidden")
        secret_store.set(key, value)
        assert secret_store.get(key) == value  # also caches, for stores that cache
        assert value not in repr(secret_store)
        assert value not in str(secret_store)
        assert value not in secret_store.description
