"""The relay credential of this machine: where it is kept, and how it is loaded, saved and deleted.

Storage layout:

- ``relay.toml`` in the valetkey config folder (``$XDG_CONFIG_HOME/valetkey``, 0700): the relay
  base URL and relay id, 0600, written atomically (temp file + fsync + rename).
- The machine token in the OS keyring, service ``valetkey-relay``, account = the relay id, so a
  backup of the disk does not carry it. When no usable OS keyring exists (a headless server, a
  container, CI) the token goes into ``relay.toml`` instead and :func:`save` says so
  (:attr:`SaveResult.warning`): better than refusing to work there.

Loading: the keyring wins; a token in the TOML is used when the keyring has none (fallback
mode); a TOML without a token and an empty keyring is an inconsistent state reported as
:class:`TokenMissing`; no file at all is :class:`NotAttached` (a ``NotFound``), never confused
with an I/O error (:class:`~valetkey_hookspecs.ConfigError` naming the file).

The keyring is reached through a :class:`TokenStore`; tests may swap it with
:func:`set_token_store`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from valetkey_hookspecs import ConfigError, NotFound, ValetkeyError
from valetkey_hookspecs.files import atomic_write

from .protocol import KEYRING_SERVICE, check_token, parse_relay_url

log = logging.getLogger("valetkey.relay")

CREDENTIAL_FILE = "relay.toml"


class NotAttached(NotFound):
    """No relay credential has been saved on this machine."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"not attached to a relay (no {path}): run 'valetkey relay connect'")
        self.path = path


class TokenMissing(ConfigError):
    """``relay.toml`` names a relay but its machine token is nowhere to be found."""


class KeyringUnavailable(Exception):
    """No usable OS keyring; the message says why."""


class TokenNotFound(Exception):
    """The keyring has no entry for this account."""


class TokenStore(Protocol):
    """The OS keyring, as far as the relay needs it (one service, accounts = relay ids)."""

    def get(self, account: str) -> str:
        """The token; :class:`TokenNotFound` or :class:`KeyringUnavailable`."""
        ...

    def set(self, account: str, token: str) -> None:
        """Create or overwrite; :class:`KeyringUnavailable` when it cannot."""
        ...

    def delete(self, account: str) -> None:
        """Remove; a missing entry is not an error; :class:`KeyringUnavailable`."""
        ...


class KeyringTokenStore:
    """The OS keyring through ``keyring``, used only when it is a recommended backend (the
    same rule as ``secrets-keyring``: no plaintext or null backends)."""

    def __init__(self, service: str = KEYRING_SERVICE) -> None:
        self.service = service

    def _backend(self) -> object:
        from valetkey_secrets_keyring.store import (  # type: ignore[import-untyped]
            find_keyring,
        )

        backend, reason = find_keyring(self.service)
        if backend is None:
            raise KeyringUnavailable(reason)
        return backend

    def get(self, account: str) -> str:
        """The token; :class:`TokenNotFound` or :class:`KeyringUnavailable`."""
        backend = self._backend()
        try:
            value = backend.get_password(self.service, account)  # type: ignore[attr-defined]
        except Exception as exc:
            raise KeyringUnavailable(_why(exc)) from None
        if value is None:
            raise TokenNotFound(account)
        return str(value)

    def set(self, account: str, token: str) -> None:
        """Create or overwrite."""
        backend = self._backend()
        try:
            backend.set_password(self.service, account, token)  # type: ignore[attr-defined]
        except Exception as exc:
            raise KeyringUnavailable(_why(exc)) from None

    def delete(self, account: str) -> None:
        """Remove; a missing entry is not an error, and neither is a missing keyring (nothing
        can be stored where there is no keyring)."""
        from keyring.errors import PasswordDeleteError

        try:
            backend = self._backend()
        except KeyringUnavailable as exc:
            log.debug("no keyring entry to remove for %s: %s", account, exc)
            return
        try:
            backend.delete_password(self.service, account)  # type: ignore[attr-defined]
        except PasswordDeleteError:
            return
        except Exception as exc:
            raise KeyringUnavailable(_why(exc)) from None


_store: TokenStore = KeyringTokenStore()


def token_store() -> TokenStore:
    """The token store in use."""
    return _store


@contextlib.contextmanager
def set_token_store(store: TokenStore) -> Iterator[None]:
    """Use ``store`` instead of the OS keyring inside the block (tests)."""
    global _store
    previous, _store = _store, store
    try:
        yield
    finally:
        _store = previous


@dataclass(frozen=True)
class Credential:
    """This machine's relay: the base URL (``…/relay/<id>/``), the id, and the machine token
    (never shown by ``repr``)."""

    relay_base_url: str
    relay_id: str
    machine_token: str = field(repr=False)
    #: where the token was found or put: "keyring" or "file"
    stored_in: str = "keyring"

    def validate(self) -> None:
        """:class:`~valetkey_hookspecs.InvalidInput` unless URL, id and token fit together."""
        _base, relay_id = parse_relay_url(self.relay_base_url)
        if relay_id != self.relay_id:
            from valetkey_hookspecs import InvalidInput

            raise InvalidInput(
                f"relay id {self.relay_id!r} does not match the URL's relay id {relay_id!r}"
            )
        check_token(self.machine_token)

    def websocket_url(self) -> str:
        """Where ``relay serve`` dials."""
        from .protocol import websocket_url

        return websocket_url(self.relay_base_url)


@dataclass(frozen=True)
class SaveResult:
    """What :func:`save` did: where the token went, and the warning to show (fallback mode)."""

    stored_in: str
    warning: str | None = None


def path() -> Path:
    """The credential file (its folder is made 0700 when the file is written)."""
    from valetkey.paths import config_dir

    return config_dir() / CREDENTIAL_FILE


def read_metadata() -> tuple[str, str, str | None]:
    """``(base_url, relay_id, fallback_token)`` from ``relay.toml``; :class:`NotAttached` when
    there is none, :class:`~valetkey_hookspecs.ConfigError` when it cannot be read or parsed."""
    file = path()
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise NotAttached(file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    url, relay_id, token = (
        data.get("relay_base_url"),
        data.get("relay_id"),
        data.get("machine_token"),
    )
    if not isinstance(url, str) or not isinstance(relay_id, str) or not relay_id:
        raise ConfigError(
            f"{file} lacks relay_base_url or relay_id: run 'valetkey relay connect --force'"
        )
    if token is not None and not isinstance(token, str):
        raise ConfigError(f"{file}: machine_token must be a string")
    try:
        base, parsed_id = parse_relay_url(url)
    except ValetkeyError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    if parsed_id != relay_id:
        raise ConfigError(f"{file}: relay_id {relay_id!r} does not match the URL ({parsed_id!r})")
    return base, relay_id, token or None


def load() -> Credential:
    """The saved credential; the keyring's token wins over one in the file."""
    base, relay_id, file_token = read_metadata()
    try:
        token = _store.get(relay_id)
    except (TokenNotFound, KeyringUnavailable) as exc:
        if file_token is not None:
            return Credential(base, relay_id, file_token, stored_in="file")
        if isinstance(exc, KeyringUnavailable):
            where = "whose machine token is kept in the OS keyring, but no OS keyring is usable "
            why = f"now ({exc}): unlock or start it, or run"
        else:
            where = "but its machine token is missing from the OS keyring "
            why = f"(service {KEYRING_SERVICE!r}, account {relay_id!r}) and from the file: run"
        raise TokenMissing(
            f"{path()} names relay {relay_id!r}, {where}{why} 'valetkey relay connect --force' "
            "to attach again"
        ) from None
    return Credential(base, relay_id, token, stored_in="keyring")


def save(cred: Credential) -> SaveResult:
    """Write ``cred``: the token to the keyring (or, with no usable keyring, into the file with
    a warning) and the metadata to ``relay.toml``. If the file cannot be written after the
    keyring was, the keyring entry is rolled back to what it was before."""
    cred.validate()
    file = path()
    try:
        previous: str | None = _store.get(cred.relay_id)
    except TokenNotFound:
        previous = None
    except KeyringUnavailable:
        previous = None
    try:
        _store.set(cred.relay_id, cred.machine_token)
    except KeyringUnavailable as exc:
        warning = (
            f"no usable OS keyring ({exc}): the machine token is stored in {file} "
            "(mode 0600) instead"
        )
        _write(file, cred, with_token=True)
        log.info("%s", warning)  # the caller shows it (valetkey relay attach prints it)
        return SaveResult("file", warning)
    try:
        _write(file, cred, with_token=False)
    except BaseException:
        try:
            if previous is None:
                _store.delete(cred.relay_id)
            else:
                _store.set(cred.relay_id, previous)
        except KeyringUnavailable as exc:
            log.warning("could not roll back the keyring entry of relay %s: %s", cred.relay_id, exc)
        raise
    return SaveResult("keyring")


def delete() -> bool:
    """Remove the credential (file and keyring entry); False when there was none. Idempotent."""
    file = path()
    try:
        _base, relay_id, _token = read_metadata()
    except NotAttached:
        return False
    except ConfigError:
        relay_id = None  # an unreadable file still goes; there is no account to clean up
    if relay_id is not None:
        revoke_keyring_entry(relay_id)
    with contextlib.suppress(FileNotFoundError):
        file.unlink()
    return True


def revoke_keyring_entry(relay_id: str) -> str | None:
    """Remove the keyring entry of ``relay_id`` only (a no-op if there is none); returns why it
    could not, for the caller to show — a stale entry is a hygiene issue, not a failure."""
    try:
        _store.delete(relay_id)
    except KeyringUnavailable as exc:
        log.warning("could not remove the keyring entry of relay %s: %s", relay_id, exc)
        return str(exc)
    return None


def _write(file: Path, cred: Credential, *, with_token: bool) -> None:
    lines = [
        "# valetkey relay credential (written by 'valetkey relay attach'; do not edit)",
        f"relay_base_url = {_toml_str(cred.relay_base_url)}",
        f"relay_id = {_toml_str(cred.relay_id)}",
    ]
    if with_token:
        lines.append(f"machine_token = {_toml_str(cred.machine_token)}")
    atomic_write(file, ("\n".join(lines) + "\n").encode("utf-8"), mode=0o600)


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON's ASCII escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=True)


def _why(exc: BaseException) -> str:
    """``Type: message`` on one short line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


__all__ = [
    "CREDENTIAL_FILE",
    "Credential",
    "KeyringTokenStore",
    "KeyringUnavailable",
    "NotAttached",
    "SaveResult",
    "TokenMissing",
    "TokenNotFound",
    "TokenStore",
    "delete",
    "load",
    "path",
    "read_metadata",
    "revoke_keyring_entry",
    "save",
    "set_token_store",
    "token_store",
]
