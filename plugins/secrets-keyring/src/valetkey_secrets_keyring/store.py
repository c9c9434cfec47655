"""Choosing where secrets go, and the OS-keyring secret store.

``open_secret_store(config, home)`` is what the plugin's factory calls:

- ``backend = "file"``: the encrypted files under ``<home>/secrets/``.
- ``backend = "keyring"``: the OS keyring, or a ``ConfigError`` saying why there is none.
- ``backend = "auto"`` (the default): the OS keyring when one is usable, else the encrypted files,
  with a one-line warning that says where secrets go and why.

A keyring is *usable* when ``keyring`` resolves to a backend it recommends (priority >= 1: the
Secret Service, macOS Keychain, Windows Credential Locker, KWallet) and a first read through it
works. ``keyring``'s ``fail.Keyring`` (NoKeyringError), its null backend, a chainer with no
recommended backend, the plaintext and other not-recommended backends of ``keyrings.alt``, and a
backend that errors at first use (no D-Bus session, a locked collection) are not usable.

The choice is made when the store is built, not lazily: the kernel builds it only when its first
user needs it (``sealer-local``, at its first seal or open), so that is first use already; and a
lazy choice would make ``description`` probe D-Bus — on Python 3.11, ``isinstance(store,
SecretStore)`` reads every protocol member, properties included.

When the OS keyring is used and ``<home>/secrets/file.key`` exists (secrets were written while
no keyring was available), a key missing from the keyring is read from the encrypted files, so
a machine that gains a keyring does not lose its KEK; new writes go to the keyring.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from valetkey_hookspecs.errors import ConfigError, ValetkeyError
from valetkey_hookspecs.interfaces import SecretStore

from .config import BACKENDS, KeyringConfig
from .filestore import EncryptedFileStore

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

log = logging.getLogger("valetkey.secrets_keyring")

#: the username read once to check that a keyring answers (never written)
PROBE_KEY = "valetkey-probe"
SECRETS_FOLDER = "secrets"


class KeyringSecretStore:
    """A :class:`~valetkey_hookspecs.SecretStore` in the OS keyring: each key is a keyring
    "username" under ``service``."""

    def __init__(
        self,
        backend: KeyringBackend,
        service: str = "valetkey",
        *,
        fallback: EncryptedFileStore | None = None,
    ) -> None:
        self._backend = backend
        self.service = service
        self._fallback = fallback
        self._description = f"OS keyring {_name(backend)} (service {service!r})"

    def __repr__(self) -> str:
        return f"KeyringSecretStore(backend={_name(self._backend)!r}, service={self.service!r})"

    @property
    def description(self) -> str:
        """Where values go, for people: the keyring backend and the service name."""
        return self._description

    def get(self, key: str) -> str | None:
        """The value, or None if unset."""
        try:
            value: str | None = self._backend.get_password(self.service, key)
        except Exception as exc:
            raise self._failed("read", key, exc) from exc
        if value is None and self._fallback is not None:
            value = self._fallback.get(key)
        return value

    def set(self, key: str, value: str) -> None:
        """Create or overwrite."""
        try:
            self._backend.set_password(self.service, key, value)
        except Exception as exc:
            raise self._failed("write", key, exc) from exc

    def delete(self, key: str) -> None:
        """Remove; a missing entry is not an error."""
        from keyring.errors import PasswordDeleteError

        try:
            self._backend.delete_password(self.service, key)
        except PasswordDeleteError:
            pass  # missing: not an error
        except Exception as exc:
            raise self._failed("delete", key, exc) from exc
        if self._fallback is not None:
            self._fallback.delete(key)

    def _failed(self, action: str, key: str, exc: Exception) -> ValetkeyError:
        return ConfigError(
            f"the OS keyring ({_name(self._backend)}) could not {action} {key!r} of service "
            f"{self.service!r}: {_why(exc)}"
        )


def open_secret_store(config: KeyringConfig, home: Path) -> SecretStore:
    """The secret store ``config`` asks for, with state under ``home``."""
    if config.backend not in BACKENDS:
        raise ConfigError(
            f"[plugin.secrets-keyring] backend must be one of {', '.join(map(repr, BACKENDS))}, "
            f"not {config.backend!r}"
        )
    folder = home / SECRETS_FOLDER
    if config.backend == "file":
        return EncryptedFileStore(folder)

    backend, reason = find_keyring(config.service)
    if backend is None:
        if config.backend == "keyring":
            raise ConfigError(
                f'[plugin.secrets-keyring] backend = "keyring" but no OS keyring is usable '
                f"({reason}). Start or unlock one (on Linux: a Secret Service such as "
                'gnome-keyring in a D-Bus session), or set backend = "auto" or "file" to keep '
                f"secrets encrypted in {folder}"
            )
        log.warning(
            "no OS keyring available (%s): secrets are stored encrypted in %s", reason, folder
        )
        return EncryptedFileStore(folder, reason=reason)

    files = EncryptedFileStore(folder)
    return KeyringSecretStore(
        backend, config.service, fallback=files if files.key_path.exists() else None
    )


def find_keyring(
    service: str, candidate: KeyringBackend | None = None
) -> tuple[KeyringBackend | None, str]:
    """The usable keyring backend (``candidate``, else the one ``keyring`` resolves), or None and
    a short reason why there is none."""
    import keyring
    from keyring.backends import chainer, fail, null

    try:
        backend = candidate if candidate is not None else keyring.get_keyring()
    except Exception as exc:  # PYTHON_KEYRING_BACKEND or keyringrc.cfg names a bad backend
        return None, f"the configured keyring backend cannot be loaded: {_why(exc)}"
    if isinstance(backend, fail.Keyring):
        return None, "NoKeyringError"
    if isinstance(backend, null.Keyring):
        return None, "the keyring is disabled (null backend)"
    if isinstance(backend, chainer.ChainerBackend):
        usable = [b for b in backend.backends if _unusable(b) is None]
        if not usable:
            return None, "NoKeyringError: the keyring chainer has no recommended backend"
        backend = usable[0]
    elif (why := _unusable(backend)) is not None:
        return None, why
    try:
        backend.get_password(service, PROBE_KEY)
    except Exception as exc:
        return None, f"{_name(backend)} failed at first use: {_why(exc)}"
    return backend, ""


def _unusable(backend: KeyringBackend) -> str | None:
    """Why ``backend`` may not hold valetkey's secrets, or None if it may. keyring's own rule:
    a priority of 1 or more is recommended, below that (plaintext files...) is not; a backend
    that cannot work here raises from its priority."""
    try:
        priority = float(backend.priority)
    except Exception as exc:
        return f"{_name(backend)} is not available: {_why(exc)}"
    if priority < 1:
        return f"{_name(backend)} is not a recommended (secure) keyring backend"
    return None


def _name(backend: KeyringBackend) -> str:
    try:
        return str(backend.name)
    except Exception:
        return type(backend).__name__


def _why(exc: BaseException) -> str:
    """``Type: first line of the message``, short enough for one log line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["KeyringSecretStore", "find_keyring", "open_secret_store"]
