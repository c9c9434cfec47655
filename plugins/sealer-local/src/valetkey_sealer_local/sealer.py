"""The local sealer: envelope encryption with AES-256-GCM and a key ring of KEKs.

Format (no byte of it is a key, and nothing but the record id is in the clear):

- ``Sealed.ciphertext`` = 12-byte nonce + AES-256-GCM(data key, plaintext, aad = record id)
- ``Sealed.wrapped_key`` = 12-byte nonce + AES-256-GCM(KEK, data key,
  aad = ``b"valetkey-wrap-v1\\0" + key id + b"\\0" + record id``)
- ``Sealed.key_id`` = the KEK's id: the first 16 hex digits of
  ``sha256(b"valetkey-kek-id:" + KEK)``. Derived from the key, so a wrong KEK (a mistyped
  ``VALETKEY_KEK``, another machine's ring) shows up as an unknown key id, not as tampering.

Where the KEK ring comes from, on first use (then kept in memory):

1. the secret store entry ``kek-ring``: JSON ``{"current": id, "keys": {id: base64},
   "superseded_at": {id: ISO 8601 time}}`` (``superseded_at``: when each old key stopped being
   current; rings written before it existed have none);
2. else ``VALETKEY_KEK``, the base64 of exactly 32 bytes (kept in memory only);
3. else a KEK generated now and saved to the secret store (once).

``rotate_kek`` and ``retire_keys`` re-read the ring from the secret store first (another process
may have rotated), change it and save it back; ``open`` re-reads it once when it meets a key id it
does not know; ``seal``, ``rewrap`` and ``current_key_id`` re-read it when this sealer's view of
it is older than ``ring_ttl`` seconds, so a long-running server stops sealing under a key the CLI
superseded within ``ring_ttl``. ``retire_keys(in_use, min_age)`` only forgets keys superseded at
least ``min_age`` seconds ago (a key without a ``superseded_at`` time gets the time of the
``retire_keys`` or ``rotate_kek`` that first sees it). When the ring came from ``VALETKEY_KEK``,
the first rotation saves that key into the ring too, so what it sealed stays readable; from then
on the ring wins over the variable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from valetkey_hookspecs.errors import ConfigError, SealError
from valetkey_hookspecs.interfaces import SecretStore
from valetkey_hookspecs.types import Sealed

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("valetkey.sealer_local")

RING_ENTRY = "kek-ring"
ENV_KEK = "VALETKEY_KEK"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_WRAPPED_SIZE = NONCE_SIZE + KEY_SIZE + TAG_SIZE
_WRAP_DOMAIN = b"valetkey-wrap-v1\x00"
_MAKE_KEK = "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"
#: seconds a sealer trusts its copy of the ring for new seals before re-reading it
DEFAULT_RING_TTL = 30.0

#: current key id, {key id: KEK} (oldest first), {old key id: when it stopped being current}
_Ring = tuple[str, dict[str, bytes], dict[str, datetime]]


def kek_id(kek: bytes) -> str:
    """The id of a KEK: derived from its bytes, 16 hex digits, reveals nothing usable."""
    return hashlib.sha256(b"valetkey-kek-id:" + kek).hexdigest()[:16]


def _wrap_aad(key_id: str, aad: bytes) -> bytes:
    # the key id is 16 hex digits (no NUL), so this is unambiguous
    return _WRAP_DOMAIN + key_id.encode("ascii") + b"\x00" + aad


def _record(aad: bytes) -> str:
    """How an error names a record: its id as text when it is UTF-8, else as hex."""
    try:
        return repr(aad.decode("utf-8"))
    except UnicodeDecodeError:
        return f"<{len(aad)} bytes: {aad.hex()}>"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(when: datetime) -> datetime:
    """``when`` with a time zone (a naive time is taken as UTC)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


class LocalSealer:
    """A :class:`~valetkey_hookspecs.Sealer` with a local key ring.

    :param secrets: the secret store holding the ring, or a callable returning it (called on
        first use, so building the sealer does not build the secret store).
    :param environ: where ``VALETKEY_KEK`` is read (default: ``os.environ``, read on first use).
    :param entry: the secret store entry of the ring.
    :param ring_ttl: seconds this sealer seals under the current key it knows before re-reading
        the ring from the secret store (another process may have rotated). Keep it well below the
        ``min_age`` the CLI retires old keys with.
    :param now: the monotonic clock ``ring_ttl`` is measured with (seconds).
    :param utc_now: the wall clock of the ``superseded_at`` times (an aware datetime).
    """

    def __init__(
        self,
        secrets: SecretStore | Callable[[], SecretStore],
        *,
        environ: Mapping[str, str] | None = None,
        entry: str = RING_ENTRY,
        ring_ttl: float = DEFAULT_RING_TTL,
        now: Callable[[], float] = time.monotonic,
        utc_now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not (math.isfinite(ring_ttl) and ring_ttl >= 0):
            raise ValueError(f"ring_ttl must be a finite number of seconds >= 0, not {ring_ttl!r}")
        if isinstance(secrets, SecretStore):
            store = secrets
            self._secrets_source: Callable[[], SecretStore] = lambda: store
        else:
            self._secrets_source = secrets
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._entry = entry
        self._ring_ttl = float(ring_ttl)
        self._now = now
        self._utc_now = utc_now
        self._lock = threading.RLock()
        self._current: str | None = None
        self.__keys: dict[str, bytes] = {}  # id -> KEK, oldest first; never shown
        self._superseded: dict[str, datetime] = {}  # old key id -> when it stopped being current
        self._read_at = -math.inf  # self._now() when the ring was last read from the store
        self._from_env = False  # the ring is VALETKEY_KEK alone, not saved anywhere
        self._aeads: dict[str, AESGCM] = {}

    def __repr__(self) -> str:
        if self._current is None:
            return "LocalSealer(<key ring not loaded yet>)"
        source = ENV_KEK if self._from_env else f"secret store entry {self._entry!r}"
        current = self._current
        ids = [current, *(k for k in self.__keys if k != current)]  # no re-read: repr does no I/O
        return f"LocalSealer(current={current!r}, key_ids={ids!r}, from={source})"

    __str__ = __repr__

    # ------------------------------------------------------------------ Sealer

    def current_key_id(self) -> str:
        """Id of the current KEK (new seals use it); loads the ring on first use, and re-reads it
        when this sealer's copy is older than ``ring_ttl``."""
        return self._fresh()

    def key_ids(self) -> list[str]:
        """Ids of every KEK this sealer can open with, current first."""
        with self._lock:
            current = self._fresh()
            return [current, *(k for k in self.__keys if k != current)]

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        """Encrypt under a fresh data key wrapped by the current KEK."""
        with self._lock:
            key_id = self._fresh()
            kek = self._aead(key_id)
        data_key = os.urandom(KEY_SIZE)
        nonce = os.urandom(NONCE_SIZE)
        ciphertext = nonce + _aesgcm(data_key).encrypt(nonce, plaintext, aad)
        return Sealed(
            ciphertext=ciphertext, wrapped_key=self._wrap(kek, key_id, data_key, aad), key_id=key_id
        )

    def open(self, sealed: Sealed, aad: bytes) -> bytes:
        """Decrypt; ``SealError`` for an unknown key id, a tampered wrapped key or ciphertext."""
        data_key = self._unwrap(sealed, aad)
        blob = sealed.ciphertext
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise SealError(
                f"cannot open record {_record(aad)}: its ciphertext is truncated "
                f"({len(blob)} bytes; key id {sealed.key_id})"
            )
        try:
            return _aesgcm(data_key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except _invalid_tag():
            raise SealError(
                f"cannot open record {_record(aad)}: its ciphertext does not verify "
                f"(tampered or corrupted; sealed under key id {sealed.key_id})"
            ) from None

    def rewrap(self, sealed: Sealed, aad: bytes) -> Sealed:
        """The same ciphertext with its data key wrapped by the current KEK."""
        data_key = self._unwrap(sealed, aad)
        with self._lock:
            key_id = self._fresh()
            kek = self._aead(key_id)
        if sealed.key_id == key_id:
            return sealed
        return Sealed(
            ciphertext=sealed.ciphertext,
            wrapped_key=self._wrap(kek, key_id, data_key, aad),
            key_id=key_id,
        )

    def rotate_kek(self) -> str:
        """Make a new KEK current, keeping old ones for opening; return its id."""
        with self._lock:
            self._ensure()
            self._refresh()
            was_env = self._from_env
            kek = os.urandom(KEY_SIZE)
            new = kek_id(kek)
            keys = {**self.__keys, new: kek}
            superseded, _ = self._stamp(new, keys, _aware(self._utc_now()))
            self._save(new, keys, superseded)
            self._adopt(new, keys, superseded, from_env=False)
        if was_env:
            log.warning(
                "the key ring (with the key of %s, id %s, and the new current key %s) is now "
                "saved as %r in the secret store (%s): from now on that ring wins and %s is "
                "ignored",
                ENV_KEK,
                next(iter(keys)),
                new,
                self._entry,
                self._secrets().description,
                ENV_KEK,
            )
        else:
            log.info("rotated the key-encryption key: %s is current", new)
        return new

    def retire_keys(self, in_use: Sequence[str], min_age: float = 0.0) -> list[str]:
        """Forget KEKs that are not current, that no record uses (``in_use``) and that stopped
        being current at least ``min_age`` seconds ago; return their ids.

        A key whose ring has no ``superseded_at`` time for it (a ring saved before those were
        kept) counts as superseded now: the time is saved, and the key is retired ``min_age``
        seconds later at the earliest.
        """
        if not (math.isfinite(min_age) and min_age >= 0):
            raise ValueError(f"min_age must be a finite number of seconds >= 0, not {min_age!r}")
        with self._lock:
            self._ensure()
            self._refresh()
            current = self._ensure()
            at = _aware(self._utc_now())
            superseded, stamped = self._stamp(current, self.__keys, at)
            grace = timedelta(seconds=min_age)
            keep = {*in_use, current}
            dropped = [
                k
                for k in self.__keys
                if k not in keep and (min_age == 0 or at - superseded[k] >= grace)
            ]
            if dropped or stamped:
                keys = {k: v for k, v in self.__keys.items() if k not in dropped}
                superseded = {k: v for k, v in superseded.items() if k in keys}
                self._save(current, keys, superseded)
                self._adopt(current, keys, superseded, from_env=self._from_env)
        if dropped:
            log.info("retired key-encryption keys no record uses: %s", ", ".join(dropped))
        return dropped

    # ------------------------------------------------------------------ wrapping

    def _wrap(self, kek: AESGCM, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + kek.encrypt(nonce, data_key, _wrap_aad(key_id, aad))

    def _unwrap(self, sealed: Sealed, aad: bytes) -> bytes:
        key_id = sealed.key_id
        with self._lock:
            self._ensure()
            if key_id not in self.__keys:
                self._refresh()  # another process may have rotated since we loaded
            if key_id not in self.__keys:
                raise SealError(
                    f"cannot open record {_record(aad)}: it is sealed under key id {key_id!r}, "
                    f"which this sealer does not have (it has {', '.join(self.key_ids())}). "
                    f"Was {ENV_KEK} or the key ring {self._entry!r} in the secret store "
                    "replaced, or the key retired?"
                )
            kek = self._aead(key_id)
        wrapped = sealed.wrapped_key
        if len(wrapped) != _WRAPPED_SIZE:
            raise SealError(
                f"cannot open record {_record(aad)}: its wrapped data key is malformed "
                f"({len(wrapped)} bytes, not {_WRAPPED_SIZE}; key id {key_id})"
            )
        try:
            return kek.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], _wrap_aad(key_id, aad))
        except _invalid_tag():
            raise SealError(
                f"cannot open record {_record(aad)}: its wrapped data key does not verify "
                f"under key id {key_id} (tampered, or sealed for another record)"
            ) from None

    def _aead(self, key_id: str) -> AESGCM:
        aead = self._aeads.get(key_id)
        if aead is None:
            aead = self._aeads[key_id] = _aesgcm(self.__keys[key_id])
        return aead

    # ------------------------------------------------------------------ the key ring

    def _secrets(self) -> SecretStore:
        return self._secrets_source()

    def _fresh(self) -> str:
        """The current key id for a new seal: the ring is re-read from the secret store when this
        sealer's copy is ``ring_ttl`` old. A failed re-read is raised, not ignored: sealing under
        a key another process may have retired would make the record unreadable."""
        with self._lock:
            current = self._ensure()
            if self._now() - self._read_at >= self._ring_ttl:
                self._refresh()
                current = self._ensure()
            return current

    def _stamp(
        self, current: str, keys: Mapping[str, bytes], at: datetime
    ) -> tuple[dict[str, datetime], list[str]]:
        """The ``superseded_at`` times of ``keys`` with ``at`` given to every old key without
        one; and the ids of those keys."""
        superseded = {k: v for k, v in self._superseded.items() if k in keys and k != current}
        stamped = [k for k in keys if k != current and k not in superseded]
        for key_id in stamped:
            superseded[key_id] = at
        return superseded, stamped

    def _ensure(self) -> str:
        """The current key id, loading the ring on first use."""
        current = self._current
        if current is not None:
            return current
        with self._lock:
            if self._current is None:
                self._load()
            assert self._current is not None
            return self._current

    def _load(self) -> None:
        stored = self._read_ring()
        env_kek = self._env_kek()
        if stored is not None:
            current, keys, superseded = stored
            if env_kek is not None and kek_id(env_kek) not in keys:
                log.warning(
                    "%s is set but ignored: the key ring %r in the secret store (%s) wins, and "
                    "it does not hold that key (id %s)",
                    ENV_KEK,
                    self._entry,
                    self._secrets().description,
                    kek_id(env_kek),
                )
            self._adopt(current, keys, superseded, from_env=False)
        elif env_kek is not None:
            self._adopt(kek_id(env_kek), {kek_id(env_kek): env_kek}, {}, from_env=True)
        else:
            kek = os.urandom(KEY_SIZE)
            new = kek_id(kek)
            self._save(new, {new: kek}, {})
            # a concurrent first start may have saved its own ring: the stored one wins
            stored = self._read_ring()
            self._adopt(*(stored or (new, {new: kek}, {})), from_env=False)
            log.info(
                "generated a key-encryption key (id %s), saved as %r in the secret store (%s)",
                self._current,
                self._entry,
                self._secrets().description,
            )

    def _refresh(self) -> None:
        """Take the ring saved in the secret store, if any (it wins over what is in memory). With
        none saved, keep the one in memory (VALETKEY_KEK's, or one deleted under our feet, which
        the next save writes back)."""
        before = self._current
        stored = self._read_ring()
        if stored is not None:
            self._adopt(*stored, from_env=False)
            if before is not None and stored[0] != before:
                log.info(
                    "the key ring in the secret store has a new current key-encryption key: %s "
                    "(was %s)",
                    stored[0],
                    before,
                )

    def _adopt(
        self,
        current: str,
        keys: dict[str, bytes],
        superseded: dict[str, datetime],
        *,
        from_env: bool,
    ) -> None:
        self.__keys = dict(keys)
        self._current = current
        self._superseded = {k: v for k, v in superseded.items() if k in keys and k != current}
        self._from_env = from_env
        self._aeads = {k: v for k, v in self._aeads.items() if k in keys}

    def _read_ring(self) -> _Ring | None:
        """The ring saved in the secret store, or None; notes when it was read."""
        secrets = self._secrets()
        started = self._now()
        raw = secrets.get(self._entry)
        if raw is None:
            self._read_at = started
            return None
        where = f"the key ring {self._entry!r} in the secret store ({secrets.description})"
        try:
            data: Any = json.loads(raw)
        except ValueError:
            raise ConfigError(f"{where} is not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
            raise ConfigError(f'{where} is not an object with "current" and "keys"')
        current = data.get("current")
        keys: dict[str, bytes] = {}
        for key_id, encoded in data["keys"].items():
            try:
                kek = base64.b64decode(encoded, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ConfigError(f"{where}: key {key_id!r} is not valid base64") from None
            if len(kek) != KEY_SIZE:
                raise ConfigError(f"{where}: key {key_id!r} is {len(kek)} bytes, not {KEY_SIZE}")
            if kek_id(kek) != key_id:
                raise ConfigError(f"{where}: key {key_id!r} does not match its id (corrupted)")
            keys[key_id] = kek
        if not isinstance(current, str) or current not in keys:
            raise ConfigError(f"{where}: its current key {current!r} is not among its keys")
        times = data.get("superseded_at", {})
        if not isinstance(times, dict):
            raise ConfigError(f'{where}: its "superseded_at" is not an object')
        superseded: dict[str, datetime] = {}
        for key_id, stamp in times.items():
            if key_id not in keys or key_id == current:
                continue  # left over: the next save drops it
            try:
                superseded[key_id] = _aware(datetime.fromisoformat(stamp))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{where}: the superseded_at time of key {key_id!r} is not an ISO 8601 time"
                ) from None
        self._read_at = started
        return current, keys, superseded

    def _save(self, current: str, keys: dict[str, bytes], superseded: dict[str, datetime]) -> None:
        ring = {
            "current": current,
            "keys": {k: base64.b64encode(v).decode("ascii") for k, v in keys.items()},
            "superseded_at": {
                k: _aware(v).isoformat()
                for k, v in superseded.items()
                if k in keys and k != current
            },
        }
        self._secrets().set(self._entry, json.dumps(ring))
        self._read_at = self._now()

    def _env_kek(self) -> bytes | None:
        raw = self._environ.get(ENV_KEK, "").strip()
        if not raw:
            return None
        hint = (
            f"it must be the base64 of exactly {KEY_SIZE} random bytes (make one with: {_MAKE_KEK})"
        )
        try:
            kek = base64.b64decode(raw.translate(str.maketrans("-_", "+/")), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{ENV_KEK} is not valid base64: {hint}") from None
        if len(kek) != KEY_SIZE:
            raise ConfigError(f"{ENV_KEK} decodes to {len(kek)} bytes: {hint}")
        return kek


__all__ = ["DEFAULT_RING_TTL", "ENV_KEK", "RING_ENTRY", "LocalSealer", "kek_id"]
