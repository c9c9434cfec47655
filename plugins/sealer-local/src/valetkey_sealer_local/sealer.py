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
3. else, at the first ``seal`` (or ``rotate_kek``), a KEK generated now and saved to the secret
   store. Reading never creates a key: before the first seal ``key_ids()`` is ``[]``,
   ``current_key_id()`` is ``""`` and ``open`` fails with an unknown key id.

The vault's home holds two files next to the ring (given as ``home``; the plugin's factory passes
the kernel's home):

- ``kek-ids.json`` (0600, written atomically whenever the ring is saved): the ids of the keys in
  the ring, current first, and where the ring was saved. Key ids are not secret. When the secret
  store has no ring but this file lists keys, the ring is *missing* (say the OS keyring is not
  reachable in this session and the secret store fell back to its encrypted files): the sealer
  refuses to generate a second ring, which would orphan every record sealed under the first, and
  raises a ``ConfigError`` that says so. ``VALETKEY_KEK`` is still accepted then if its key is
  one of the listed ones. A ring that lacks listed keys is warned about, and never rotated or
  retired from. A ring found without the file (a vault made before it existed) gets it written.
- ``kek-ring.lock``: every read-change-write of the ring (generating it, ``rotate_kek``,
  ``retire_keys``, the ``superseded_at`` bookkeeping) holds an exclusive ``flock`` on it and
  re-reads the ring inside the lock, so two processes (or two sealers of one process) starting,
  rotating or retiring at once never overwrite each other's keys.

``rotate_kek`` and ``retire_keys`` re-read the ring from the secret store first (another process
may have rotated), change it and save it back; ``open`` re-reads it once when it meets a key id it
does not know; ``seal``, ``rewrap`` and ``current_key_id`` re-read it when this sealer's view of
it is older than ``ring_ttl`` seconds, so a long-running server stops sealing under a key the CLI
superseded within ``ring_ttl``; a failing read (a locked keyring) is a ``SealError`` naming the
secret store, never a key that may have been retired. ``retire_keys(in_use, min_age)`` only
forgets keys superseded at least ``min_age`` seconds ago (a key without a ``superseded_at`` time
gets the time of the ``retire_keys`` or ``rotate_kek`` that first sees it). When the ring came
from ``VALETKEY_KEK``, the first rotation saves that key into the ring too, so what it sealed
stays readable; from then on the ring wins over the variable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from valetkey_hookspecs.errors import ConfigError, SealError, ValetkeyError
from valetkey_hookspecs.files import atomic_write, private_dir
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
#: in the home: the ids of the vault's keys (not secret), and the lock of every ring change
IDS_FILE = "kek-ids.json"
LOCK_FILE = "kek-ring.lock"
#: seconds to wait for another process's ring change before giving up
DEFAULT_LOCK_TIMEOUT = 30.0

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


def _why(exc: BaseException) -> str:
    """A valetkey error's message; else ``Type: first line of the message``."""
    if isinstance(exc, ValetkeyError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _KnownIds(NamedTuple):
    """What ``kek-ids.json`` says: the vault's key ids (current first) and where the ring was
    last saved."""

    ids: list[str]
    saved_in: str | None


class LocalSealer:
    """A :class:`~valetkey_hookspecs.Sealer` with a local key ring.

    :param secrets: the secret store holding the ring, or a callable returning it (called on
        first use, so building the sealer does not build the secret store).
    :param home: the vault's home folder (0700), or a callable returning it (called on first
        use): it holds ``kek-ids.json`` and ``kek-ring.lock``. Without one (tests, embedding)
        there is no lock between processes and no record of the vault's key ids, so nothing
        stops a second ring from being generated when the first is missing.
    :param environ: where ``VALETKEY_KEK`` is read (default: ``os.environ``, read on first use).
    :param entry: the secret store entry of the ring.
    :param ring_ttl: seconds this sealer seals under the current key it knows before re-reading
        the ring from the secret store (another process may have rotated). Keep it well below the
        ``min_age`` the CLI retires old keys with.
    :param lock_timeout: seconds to wait for ``kek-ring.lock`` while another process changes the
        ring, before failing with a ``SealError``.
    :param now: the monotonic clock ``ring_ttl`` is measured with (seconds).
    :param utc_now: the wall clock of the ``superseded_at`` times (an aware datetime).
    """

    def __init__(
        self,
        secrets: SecretStore | Callable[[], SecretStore],
        *,
        home: Path | Callable[[], Path] | None = None,
        environ: Mapping[str, str] | None = None,
        entry: str = RING_ENTRY,
        ring_ttl: float = DEFAULT_RING_TTL,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        now: Callable[[], float] = time.monotonic,
        utc_now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not (math.isfinite(ring_ttl) and ring_ttl >= 0):
            raise ValueError(f"ring_ttl must be a finite number of seconds >= 0, not {ring_ttl!r}")
        if not (math.isfinite(lock_timeout) and lock_timeout >= 0):
            raise ValueError(
                f"lock_timeout must be a finite number of seconds >= 0, not {lock_timeout!r}"
            )
        if isinstance(secrets, SecretStore):
            store = secrets
            self._secrets_source: Callable[[], SecretStore] = lambda: store
        else:
            self._secrets_source = secrets
        if isinstance(home, Path):
            folder = home
            self._home_source: Callable[[], Path] | None = lambda: folder
        else:
            self._home_source = home
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._entry = entry
        self._ring_ttl = float(ring_ttl)
        self._lock_timeout = float(lock_timeout)
        self._now = now
        self._utc_now = utc_now
        self._lock = threading.RLock()
        self._lock_depth = 0  # how deep this sealer is in _ring_lock (under self._lock)
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
        when this sealer's copy is older than ``ring_ttl``. ``""`` while there is no key ring
        yet (nothing was ever sealed): reading never creates a key."""
        return self._fresh(create=False) or ""

    def key_ids(self) -> list[str]:
        """Ids of every KEK this sealer can open with, current first (``[]`` while there is no
        key ring yet)."""
        with self._lock:
            current = self._fresh(create=False)
            if current is None:
                return []
            return [current, *(k for k in self.__keys if k != current)]

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        """Encrypt under a fresh data key wrapped by the current KEK (the first seal of a new
        vault generates the first KEK)."""
        with self._lock:
            key_id = self._fresh(create=True)
            assert key_id is not None
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
            key_id = self._fresh(create=True)
            assert key_id is not None
            kek = self._aead(key_id)
        if sealed.key_id == key_id:
            return sealed
        return Sealed(
            ciphertext=sealed.ciphertext,
            wrapped_key=self._wrap(kek, key_id, data_key, aad),
            key_id=key_id,
        )

    def rotate_kek(self) -> str:
        """Make a new KEK current, keeping old ones for opening; return its id. On a vault with
        no key ring yet, this generates the first KEK."""
        with self._ring_lock():
            had_ring = self._reload_for_change()
            was_env = self._from_env
            kek = os.urandom(KEY_SIZE)
            new = kek_id(kek)
            keys = {**self.__keys, new: kek} if had_ring else {new: kek}
            superseded, _ = self._stamp(new, keys, _aware(self._utc_now()))
            self._commit(new, keys, superseded)
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
        elif not had_ring:
            self._log_generated()
        else:
            log.info("rotated the key-encryption key: %s is current", new)
        return new

    def retire_keys(self, in_use: Sequence[str], min_age: float = 0.0) -> list[str]:
        """Forget KEKs that are not current, that no record uses (``in_use``) and that stopped
        being current at least ``min_age`` seconds ago; return their ids.

        A key whose ring has no ``superseded_at`` time for it (a ring saved before those were
        kept) counts as superseded now: the time is saved, and the key is retired ``min_age``
        seconds later at the earliest. With no key ring yet there is nothing to retire (and
        nothing is created).
        """
        if not (math.isfinite(min_age) and min_age >= 0):
            raise ValueError(f"min_age must be a finite number of seconds >= 0, not {min_age!r}")
        with self._ring_lock():
            if not self._reload_for_change():
                return []
            current = self._current
            assert current is not None
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
                self._commit(current, keys, superseded)
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
            if self._current is None:
                self._load(create=False)
            elif key_id not in self.__keys:
                self._refresh()  # another process may have rotated since we loaded
            if key_id not in self.__keys:
                current = self._current
                if current is None:
                    has = "none: there is no key ring yet"
                else:
                    has = ", ".join([current, *(k for k in self.__keys if k != current)])
                raise SealError(
                    f"cannot open record {_record(aad)}: it is sealed under key id {key_id!r}, "
                    f"which this sealer does not have (it has {has}). "
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

    def _fresh(self, *, create: bool) -> str | None:
        """The current key id for a new seal (None: no ring yet, and ``create`` is false). The
        ring is loaded on first use, and re-read from the secret store when this sealer's copy
        is ``ring_ttl`` old. A failed re-read is raised, not ignored: sealing under a key another
        process may have retired would make the record unreadable."""
        with self._lock:
            if self._current is None:
                self._load(create=create)
            elif self._now() - self._read_at >= self._ring_ttl:
                self._refresh()
            return self._current

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

    def _load(self, *, create: bool) -> None:
        """Load the ring on first use: the secret store's, else ``VALETKEY_KEK``'s, else (only
        when ``create``) a new one, unless ``kek-ids.json`` says this vault has keys already."""
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
            self._check_known_ids()
            return
        known = self._known_ids()
        if env_kek is not None:
            env_id = kek_id(env_kek)
            if known is not None and known.ids and env_id not in known.ids:
                raise ConfigError(self._missing_ring(known, env_id=env_id))
            self._adopt(env_id, {env_id: env_kek}, {}, from_env=True)
            return
        if known is not None and known.ids:
            raise ConfigError(self._missing_ring(known))
        if not create:
            return  # reading never creates a key
        with self._ring_lock():
            if self._reload_for_change():
                return  # another process (or thread) made the ring meanwhile: it wins
            kek = os.urandom(KEY_SIZE)
            new = kek_id(kek)
            self._commit(new, {new: kek}, {})
            self._adopt(new, {new: kek}, {}, from_env=False)
        self._log_generated()

    def _log_generated(self) -> None:
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

    def _reload_for_change(self) -> bool:
        """Inside the ring lock, before changing the ring: take the latest ring (the secret
        store's; else the one in memory, deleted from the store under our feet; else
        ``VALETKEY_KEK``'s) and check it holds every key ``kek-ids.json`` lists, so a change can
        never drop a key of this vault. False when there is no ring at all (nor listed keys)."""
        stored = self._read_ring()
        known = self._known_ids()
        listed = known.ids if known is not None else []
        if stored is not None:
            lacking = [k for k in listed if k not in stored[1]]
            if lacking:
                raise ConfigError(self._foreign_ring(lacking, refusing=True))
            self._adopt(*stored, from_env=False)
            return True
        if self._current is not None and not self._from_env:
            if any(k not in self.__keys for k in listed):
                raise ConfigError(self._missing_ring(known))
            return True  # the next save writes it back
        env_kek = self._env_kek()
        if env_kek is not None:
            env_id = kek_id(env_kek)
            if any(k != env_id for k in listed):
                raise ConfigError(self._missing_ring(known, env_id=env_id))
            self._adopt(env_id, {env_id: env_kek}, {}, from_env=True)
            return True
        if listed:
            raise ConfigError(self._missing_ring(known))
        return False

    def _check_known_ids(self) -> None:
        """After loading a ring from the secret store: warn when it lacks keys ``kek-ids.json``
        lists (it is not this vault's ring), and write the file when it is missing or lists
        fewer keys than the ring (a vault made before the file existed, or a crash between the
        two writes)."""
        if self._home_source is None:
            return
        known = self._known_ids()
        if known is not None:
            lacking = [k for k in known.ids if k not in self.__keys]
            if lacking:
                log.warning("%s", self._foreign_ring(lacking, refusing=False))
                return
            if set(known.ids) == set(self.__keys):
                return
        try:
            with self._ring_lock():
                stored = self._read_ring()
                if stored is None:
                    return
                known = self._known_ids()
                if known is None or set(known.ids) < set(stored[1]):
                    self._write_ids(stored[0], stored[1])
                self._adopt(*stored, from_env=False)
        except ValetkeyError as exc:  # a read-only home: reading the ring still works
            log.warning("could not record this vault's key ids: %s", exc)

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

    def _where(self) -> str:
        return self._secrets().description

    def _read_ring(self) -> _Ring | None:
        """The ring saved in the secret store, or None; notes when it was read."""
        secrets = self._secrets()
        started = self._now()
        try:
            raw = secrets.get(self._entry)
        except Exception as exc:
            raise SealError(
                f"cannot read the key ring {self._entry!r} from the secret store "
                f"({secrets.description}): {_why(exc)}"
            ) from exc
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

    def _commit(
        self, current: str, keys: dict[str, bytes], superseded: dict[str, datetime]
    ) -> None:
        """Save the ring and ``kek-ids.json`` (inside the ring lock). Ids leaving the ring leave
        the file first and ids joining it join after the ring is saved, so whatever a crash
        interrupts, the file never lists a key the ring lacks."""
        known = self._known_ids()
        if known is not None:
            kept = [k for k in known.ids if k in keys]
            if len(kept) < len(known.ids):
                self._write_ids(kept[0] if kept else None, dict.fromkeys(kept, b""))
        self._save(current, keys, superseded)
        self._write_ids(current, keys)

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
        secrets = self._secrets()
        try:
            secrets.set(self._entry, json.dumps(ring))
        except Exception as exc:
            raise SealError(
                f"cannot save the key ring {self._entry!r} to the secret store "
                f"({secrets.description}): {_why(exc)}"
            ) from exc
        self._read_at = self._now()

    # ------------------------------------------------------------------ kek-ids.json, the lock

    def _home(self) -> Path | None:
        return None if self._home_source is None else private_dir(self._home_source())

    def _known_ids(self) -> _KnownIds | None:
        """What ``kek-ids.json`` lists, or None when there is no such file (or no home)."""
        home = self._home()
        if home is None:
            return None
        path = home / IDS_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = None
        ids = data.get("key_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(k, str) for k in ids):
            raise ConfigError(
                f'{path} is not an object with a "key_ids" list (corrupted?): it lists the ids '
                f"of this vault's key-encryption keys; delete it, and the next use of the key "
                f"ring writes it again"
            )
        saved_in = data.get("secret_store")
        return _KnownIds(list(ids), saved_in if isinstance(saved_in, str) else None)

    def _write_ids(self, current: str | None, keys: Mapping[str, object]) -> None:
        home = self._home()
        if home is None:
            return
        ids = [k for k in (current,) if k is not None]
        ids += [k for k in keys if k != current]
        body = {"entry": self._entry, "key_ids": ids, "secret_store": self._where()}
        path = home / IDS_FILE
        try:
            atomic_write(path, (json.dumps(body, indent=2) + "\n").encode(), mode=0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot write {path} (the ids of this vault's key-encryption keys): "
                f"{exc.strerror or exc}"
            ) from None

    @contextlib.contextmanager
    def _ring_lock(self) -> Iterator[None]:
        """Hold this sealer's lock and an exclusive ``flock`` on ``<home>/kek-ring.lock``
        (re-entrant within this sealer)."""
        with self._lock:
            home = None if self._lock_depth else self._home()
            fd = None if home is None else self._acquire(home / LOCK_FILE)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if fd is not None:
                    os.close(fd)  # releases the flock

    def _acquire(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the key ring lock {path}: {exc.strerror or exc}"
            ) from None
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
            except OSError as exc:
                os.close(fd)
                raise ConfigError(f"cannot lock {path}: {exc.strerror or exc}") from None
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SealError(
                    f"timed out after {self._lock_timeout:g} s waiting for the key ring lock "
                    f"{path}: another valetkey process is changing the key ring (generating, "
                    "rotating or retiring keys) and has not finished"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # ------------------------------------------------------------------ messages

    def _ids_path(self) -> str:
        home = self._home_source() if self._home_source is not None else None
        return str(home / IDS_FILE) if home is not None else IDS_FILE

    def _missing_ring(self, known: _KnownIds | None, *, env_id: str | None = None) -> str:
        ids = known.ids if known is not None else []
        path = self._ids_path()
        message = (
            f"the KEK ring {self._entry!r} is missing from {self._where()}, but this vault has "
            f"keys {', '.join(ids)} ({path})"
        )
        if known is not None and known.saved_in and known.saved_in != self._where():
            message += f", last saved to {known.saved_in}"
        if env_id is not None:
            if env_id in ids:
                message += f"; {ENV_KEK} holds only {env_id} of them"
            else:
                message += f"; {ENV_KEK} is set, but its key {env_id} is not one of them"
        return (
            message + ": is the OS keyring unavailable in this session? Set "
            '[plugin.secrets-keyring] backend = "keyring" to fail instead of falling back, or '
            f"restore the ring; {ENV_KEK} can supply a key. Not making a new ring, which would "
            "leave the records sealed under those keys unreadable (to give them up and start "
            f"afresh, delete {path})"
        )

    def _foreign_ring(self, lacking: Sequence[str], *, refusing: bool) -> str:
        path = self._ids_path()
        message = (
            f"the KEK ring {self._entry!r} in {self._where()} lacks keys {', '.join(lacking)} "
            f"that this vault has ({path}): is the OS keyring unavailable in this session, and "
            "this ring another one, or an old copy? "
        )
        if refusing:
            return message + (
                "Not changing it, which would drop those keys for good; restore the ring that "
                f"holds them, or, if they were retired on purpose, delete {path}"
            )
        return message + (
            "Records sealed under those keys cannot be opened in this session, and rotating or "
            "retiring keys is refused"
        )

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


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_RING_TTL",
    "ENV_KEK",
    "IDS_FILE",
    "LOCK_FILE",
    "RING_ENTRY",
    "LocalSealer",
    "kek_id",
]
