"""Identifiers: random, prefixed, URL-safe; and the owner a CLI user acts as by default."""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import secrets

from valetkey_hookspecs import InvalidInput

OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


def new_id(prefix: str) -> str:
    """``prefix_`` + 16 random bytes in hex."""
    return f"{prefix}_{secrets.token_hex(16)}"


def credential_id(connection_id: str) -> str:
    """The id (and seal AAD) of a connection's one credential."""
    return "cred_" + connection_id.removeprefix("conn_")


def check_owner(owner: str) -> str:
    """An owner name, validated (it scopes every record)."""
    if not isinstance(owner, str) or not OWNER.match(owner):
        raise InvalidInput(
            f"invalid owner {owner!r}: 1-128 letters, digits and . _ @ + -, starting with a "
            "letter or digit"
        )
    return owner


def default_owner() -> str:
    """The OS user name (``VALETKEY_OWNER`` overrides it)."""
    return os.environ.get("VALETKEY_OWNER") or getpass.getuser()


def hash_token(token: str) -> str:
    """SHA-256 hex of an API token: what the store keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


def process_id() -> str:
    """A holder name unique to this process, for leases."""
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
