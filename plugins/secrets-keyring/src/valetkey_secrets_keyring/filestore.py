"""The encrypted-file secret store: the fallback when no OS keyring is usable.

Layout, under ``<home>/secrets/`` (0700):

- ``file.key``: 32 random bytes (0600), made atomically on first write; never replaced.
- one file per entry (0600, written atomically), named by the SHA-256 of the entry's key so the
  folder does not even show which entries exist. Its bytes are a format byte (``0x01``), a
  12-byte random nonce and the AES-256-GCM ciphertext of the UTF-8 value with the entry's key as
  associated data: an entry file renamed to another key's name fails to open.

What this protects against: the value is never written in plaintext, so a backup, a copied
database or a stray ``grep`` does not leak it. What it does not: anyone who can read both
``file.key`` and the entry (the same Unix user, or root) can decrypt it. An OS keyring is better;
this is what is left on a machine without one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from valetkey_hookspecs.errors import ConfigError, SealError
from valetkey_hookspecs.files import atomic_write, private_dir

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "file.key"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
FORMAT_V1 = b"\x01"


def entry_name(key: str) -> str:
    """The file name of an entry: the hex SHA-256 of its key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class EncryptedFileStore:
    """A :class:`~valetkey_hookspecs.SecretStore` of AES-256-GCM encrypted files in ``folder``.

    ``reason``, when given, is why the OS keyring was not used; it becomes part of
    ``description``.
    """

    def __init__(self, folder: Path, *, reason: str | None = None) -> None:
        self.folder = folder
        self.key_path = folder / KEY_FILE
        self.reason = reason
        self._description = f"encrypted files in {folder}" + (
            f" (no OS keyring: {reason})" if reason else ""
        )
        self._aead: AESGCM | None = None

    def __repr__(self) -> str:
        return f"EncryptedFileStore({str(self.folder)!r})"

    @property
    def description(self) -> str:
        """Where values go, for people: the folder, and why the OS keyring is not used."""
        return self._description

    # ------------------------------------------------------------------ SecretStore

    def get(self, key: str) -> str | None:
        """The value, or None if unset."""
        path = self.folder / entry_name(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        aead = self._cipher(create=False)
        from cryptography.exceptions import InvalidTag

        where = f"secret {key!r} ({path})"
        if len(blob) < 1 + NONCE_SIZE + TAG_SIZE or blob[:1] != FORMAT_V1:
            raise SealError(f"cannot read {where}: not a valetkey encrypted entry (corrupted?)")
        nonce, ciphertext = blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]
        try:
            plaintext = aead.decrypt(nonce, ciphertext, key.encode("utf-8"))
        except InvalidTag:
            raise SealError(
                f"cannot decrypt {where}: it does not verify under the file key "
                f"{self.key_path} (the file key was replaced, or the entry is corrupted)"
            ) from None
        return plaintext.decode("utf-8")

    def set(self, key: str, value: str) -> None:
        """Create or overwrite (atomically, 0600)."""
        aead = self._cipher(create=True)
        nonce = os.urandom(NONCE_SIZE)
        blob = FORMAT_V1 + nonce + aead.encrypt(nonce, value.encode("utf-8"), key.encode("utf-8"))
        atomic_write(self.folder / entry_name(key), blob, mode=0o600)

    def delete(self, key: str) -> None:
        """Remove; a missing entry is not an error."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / entry_name(key)).unlink()

    def has_entries(self) -> bool:
        """True when the folder holds at least one encrypted entry."""
        try:
            return any(_is_entry(p.name) for p in self.folder.iterdir())
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ the file key

    def _cipher(self, *, create: bool) -> AESGCM:
        if self._aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead = AESGCM(self._file_key(create=create))
        return self._aead

    def _file_key(self, *, create: bool) -> bytes:
        private_dir(self.folder)
        if not self.key_path.exists():
            if not create:
                raise ConfigError(
                    f"the file key {self.key_path} is missing, so the secrets in {self.folder} "
                    "cannot be decrypted: restore it from a backup"
                )
            if self.has_entries():
                raise ConfigError(
                    f"the file key {self.key_path} is missing but {self.folder} holds encrypted "
                    "secrets: restore file.key from a backup, or move the folder away to start "
                    "afresh (its secrets are lost)"
                )
            self._create_file_key()
        return self._read_file_key()

    def _create_file_key(self) -> None:
        """Write 32 random bytes to ``file.key`` atomically and never over an existing one (a
        concurrent process may win the race: then its key is the one used)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE}.", suffix=".tmp", dir=self.folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(KEY_SIZE))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.key_path)  # atomic, and fails rather than replace
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _read_file_key(self) -> bytes:
        path = self.key_path
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the file key {path} is not a regular file")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ConfigError(
                f"the file key {path} belongs to uid {info.st_uid}, not to this user "
                f"(uid {os.getuid()}): refusing to use it"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"the file key {path} has mode {mode:04o}: it must be 0600 (readable by its "
                f"owner only). If no one else could have read it, fix it with: chmod 600 {path}"
            )
        data = path.read_bytes()
        if len(data) != KEY_SIZE:
            raise ConfigError(
                f"the file key {path} holds {len(data)} bytes, not {KEY_SIZE}: it is corrupted "
                "(restore it from a backup)"
            )
        return data


def _is_entry(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


__all__ = ["EncryptedFileStore", "entry_name"]
