"""Conversions between domain values and PostgreSQL columns.

The column forms are the SQLite store's, on purpose: times are BIGINT microseconds since the epoch
(UTC), mappings canonical JSON text, sealed values BYTEA exactly as given. So ``valetkey store
migrate`` copies rows as they are, and a checksum over both databases compares like with like.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from valetkey_hookspecs.errors import InvalidInput
from valetkey_hookspecs.types import Sealed, utcnow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
E = TypeVar("E", bound=StrEnum)


def to_us(value: datetime, what: str) -> int:
    """Microseconds since the epoch; ``InvalidInput`` naming ``what`` for a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{what} must be a timezone-aware datetime (got a naive one)")
    return (value - EPOCH) // _US


def opt_to_us(value: datetime | None, what: str) -> int | None:
    """``to_us``, None passing through."""
    return None if value is None else to_us(value, what)


def from_us(value: int) -> datetime:
    """The aware UTC datetime of a stored microsecond count."""
    return EPOCH + timedelta(microseconds=value)


def opt_from_us(value: int | None) -> datetime | None:
    """``from_us``, None passing through."""
    return None if value is None else from_us(value)


def now_us() -> int:
    """This process's clock in stored form (leases use the database's clock instead)."""
    return to_us(utcnow(), "now")


def to_json(value: Mapping[str, Any] | None, what: str) -> str:
    """Canonical JSON of a mapping; ``InvalidInput`` naming ``what`` if it is not JSON data."""
    try:
        return json.dumps(dict(value or {}), separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON data: {exc}") from None


def from_json(text: str) -> dict[str, Any]:
    """Inverse of ``to_json``."""
    value: dict[str, Any] = json.loads(text)
    return value


def sealed_from(ciphertext: bytes, wrapped_key: bytes, key_id: str) -> Sealed:
    """A ``Sealed`` from its three columns, bytes exactly as stored."""
    return Sealed(ciphertext=bytes(ciphertext), wrapped_key=bytes(wrapped_key), key_id=key_id)


def enum_value(kind: type[E], value: str, what: str) -> str:
    """The stored text of an enum member; ``InvalidInput`` naming the allowed values."""
    try:
        return kind(value).value
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidInput(f"{what} must be one of {allowed} (got {value!r})") from None
