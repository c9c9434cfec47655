"""SealerContract: what every sealer (``valetkey_register_sealers``) must do.

Subclass it and override the ``sealer`` fixture with a sealer that starts from a fresh key ring
(the contract rotates and retires keys). A sealer may create its first key at the first seal:
until then ``current_key_id()`` may be ``""`` and ``key_ids()`` ``[]``, and reading them must
not create one::

    class TestMySealer(SealerContract):
        @pytest.fixture
        def sealer(self):
            return MySealer(InMemorySecrets())
"""

from __future__ import annotations

import dataclasses

import pytest

from ..errors import SealError
from ..interfaces import Sealer
from ..types import Sealed

_PLAINTEXT = b'{"access_token": "tok-PLAINTEXT-0f3a9c", "refresh_token": "rt-PLAINTEXT-77"}'
_AAD = b"cred_0001"


def _flip(data: bytes, index: int) -> bytes:
    """``data`` with one bit flipped at ``index`` (negative counts from the end)."""
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _assert_quiet(error: SealError, plaintext: bytes = _PLAINTEXT) -> None:
    """The error names things, never the plaintext (in any of its usual spellings)."""
    text = " ".join([str(error), repr(error), *(str(a) for a in error.args)])
    for spelling in (plaintext.decode(), repr(plaintext), plaintext.hex()):
        assert spelling not in text
    for fragment in (b"tok-PLAINTEXT-0f3a9c", b"rt-PLAINTEXT-77"):
        assert fragment.decode() not in text


class SealerContract:
    """Subclass and override ``sealer`` to return a sealer with a fresh key ring."""

    @pytest.fixture
    def sealer(self) -> Sealer:
        raise NotImplementedError(
            "subclass SealerContract and override the 'sealer' fixture to return the Sealer "
            "under test, starting from a fresh key ring"
        )

    # ------------------------------------------------------------------ shape

    def test_matches_the_protocol(self, sealer: Sealer) -> None:
        assert isinstance(sealer, Sealer)
        assert isinstance(sealer.current_key_id(), str)
        sealer.seal(_PLAINTEXT, _AAD)
        assert sealer.current_key_id()
        assert sealer.current_key_id() == sealer.current_key_id()

    def test_a_fresh_sealer_has_no_key_or_a_current_one(self, sealer: Sealer) -> None:
        before = sealer.current_key_id()
        ids = sealer.key_ids()
        if before == "":
            assert ids == []  # no key yet: reading did not make one
            assert sealer.current_key_id() == ""
            assert sealer.retire_keys([]) == []
            assert sealer.key_ids() == []
        else:
            assert ids[0] == before
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        assert sealer.current_key_id()
        assert sealed.key_id == sealer.current_key_id()
        if before:
            assert sealer.current_key_id() == before
        assert sealer.key_ids()[0] == sealer.current_key_id()

    def test_key_ids_lists_the_current_key_first(self, sealer: Sealer) -> None:
        sealer.seal(_PLAINTEXT, _AAD)
        ids = sealer.key_ids()
        assert ids
        assert ids[0] == sealer.current_key_id()
        assert len(ids) == len(set(ids))

    # ------------------------------------------------------------------ sealing

    def test_seal_then_open_round_trips(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        assert isinstance(sealed, Sealed)
        assert sealed.key_id == sealer.current_key_id()
        assert _PLAINTEXT not in sealed.ciphertext
        assert _PLAINTEXT not in sealed.wrapped_key
        assert sealer.open(sealed, _AAD) == _PLAINTEXT

    def test_empty_and_binary_plaintexts_round_trip(self, sealer: Sealer) -> None:
        for plaintext in (b"", bytes(range(256)) * 4):
            assert sealer.open(sealer.seal(plaintext, _AAD), _AAD) == plaintext

    def test_each_seal_uses_a_fresh_data_key(self, sealer: Sealer) -> None:
        one = sealer.seal(_PLAINTEXT, _AAD)
        two = sealer.seal(_PLAINTEXT, _AAD)
        assert one.ciphertext != two.ciphertext
        assert one.wrapped_key != two.wrapped_key
        assert sealer.open(one, _AAD) == sealer.open(two, _AAD) == _PLAINTEXT

    def test_aad_binds_the_record(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        with pytest.raises(SealError) as info:
            sealer.open(sealed, b"cred_0002")
        _assert_quiet(info.value)

    def test_tampered_ciphertext_is_a_seal_error(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        for index in (0, len(sealed.ciphertext) // 2, -1):
            bad = dataclasses.replace(sealed, ciphertext=_flip(sealed.ciphertext, index))
            with pytest.raises(SealError) as info:
                sealer.open(bad, _AAD)
            _assert_quiet(info.value)
        truncated = dataclasses.replace(sealed, ciphertext=sealed.ciphertext[:5])
        with pytest.raises(SealError):
            sealer.open(truncated, _AAD)

    def test_tampered_wrapped_key_is_a_seal_error(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        for index in (0, len(sealed.wrapped_key) // 2, -1):
            bad = dataclasses.replace(sealed, wrapped_key=_flip(sealed.wrapped_key, index))
            with pytest.raises(SealError) as info:
                sealer.open(bad, _AAD)
            _assert_quiet(info.value)
        with pytest.raises(SealError):
            sealer.open(dataclasses.replace(sealed, wrapped_key=b""), _AAD)

    def test_unknown_key_id_is_a_seal_error_naming_it(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        stranger = "0123456789abcdef"
        assert stranger not in sealer.key_ids()
        with pytest.raises(SealError) as info:
            sealer.open(dataclasses.replace(sealed, key_id=stranger), _AAD)
        assert stranger in str(info.value)
        _assert_quiet(info.value)

    def test_error_messages_differ_by_cause(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        causes = [
            dataclasses.replace(sealed, key_id="0123456789abcdef"),
            dataclasses.replace(sealed, wrapped_key=_flip(sealed.wrapped_key, -1)),
            dataclasses.replace(sealed, ciphertext=_flip(sealed.ciphertext, -1)),
        ]
        messages = set()
        for bad in causes:
            with pytest.raises(SealError) as info:
                sealer.open(bad, _AAD)
            messages.add(str(info.value))
        assert len(messages) == len(causes)

    # ------------------------------------------------------------------ rotation

    def test_rotate_makes_a_new_current_key(self, sealer: Sealer) -> None:
        old = sealer.seal(_PLAINTEXT, _AAD).key_id
        assert old == sealer.current_key_id()
        new = sealer.rotate_kek()
        assert new != old
        assert sealer.current_key_id() == new
        assert sealer.key_ids()[0] == new
        assert old in sealer.key_ids()
        assert sealer.seal(_PLAINTEXT, _AAD).key_id == new

    def test_old_seals_still_open_after_rotate(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        sealer.rotate_kek()
        assert sealer.open(sealed, _AAD) == _PLAINTEXT

    def test_rewrap_moves_the_data_key_to_the_current_kek(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        new = sealer.rotate_kek()
        moved = sealer.rewrap(sealed, _AAD)
        assert moved.key_id == new
        assert moved.ciphertext == sealed.ciphertext
        assert moved.wrapped_key != sealed.wrapped_key
        assert sealer.open(moved, _AAD) == _PLAINTEXT

    def test_rewrap_checks_the_record(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        sealer.rotate_kek()
        with pytest.raises(SealError):
            sealer.rewrap(sealed, b"cred_0002")
        with pytest.raises(SealError):
            sealer.rewrap(dataclasses.replace(sealed, key_id="0123456789abcdef"), _AAD)

    def test_retire_keeps_keys_in_use_and_the_current_one(self, sealer: Sealer) -> None:
        kept = sealer.seal(_PLAINTEXT, _AAD)
        first = sealer.current_key_id()
        second = sealer.rotate_kek()
        dropped = sealer.seal(_PLAINTEXT, b"cred_0002")
        third = sealer.rotate_kek()

        retired = sealer.retire_keys([first])
        assert retired == [second]
        assert sealer.current_key_id() == third
        assert sealer.key_ids() == [third, first]
        assert sealer.open(kept, _AAD) == _PLAINTEXT
        with pytest.raises(SealError) as info:
            sealer.open(dropped, b"cred_0002")
        assert second in str(info.value)

        assert sealer.retire_keys([]) == [first]
        assert sealer.key_ids() == [third]
        assert sealer.retire_keys([]) == []
        assert sealer.current_key_id() == third

    def test_retire_keeps_a_key_superseded_less_than_min_age_ago(self, sealer: Sealer) -> None:
        sealed = sealer.seal(_PLAINTEXT, _AAD)
        first = sealer.current_key_id()
        second = sealer.rotate_kek()  # `first` stopped being current just now

        assert sealer.retire_keys([], min_age=60) == []
        assert sealer.key_ids() == [second, first]
        assert sealer.open(sealed, _AAD) == _PLAINTEXT
        assert sealer.retire_keys([first], min_age=0) == []  # still in use

        assert sealer.retire_keys([], min_age=0) == [first]
        assert sealer.key_ids() == [second]
        assert sealer.current_key_id() == second
