"""The column forms every SQL store uses, so records move between them unchanged (``valetkey
store migrate``) and a checksum over two databases compares like with like.

Datetimes are integer microseconds since the Unix epoch (UTC), so ``ORDER BY`` and range queries
work on plain integers and values come back as timezone-aware UTC datetimes equal to what was
stored. Mappings (metadata, detail, data, hook state, policy) are JSON text. ``Sealed`` bytes are
three columns (ciphertext, wrapped key, key id) stored exactly as given. Errors name the offending
type or field, never a value.
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
_MICROSECOND = timedelta(microseconds=1)


def to_us(value: datetime, what: str) -> int:
    """Microseconds since the epoch; ``InvalidInput`` naming ``what`` for a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{what} must be a timezone-aware datetime (got a naive one)")
    return (value - EPOCH) // _MICROSECOND


def opt_to_us(value: datetime | None, what: str) -> int | None:
    """``to_us`` that lets None through."""
    return None if value is None else to_us(value, what)


def from_us(value: int) -> datetime:
    """The aware UTC datetime of a stored microsecond count."""
    return EPOCH + timedelta(microseconds=value)


def opt_from_us(value: int | None) -> datetime | None:
    """``from_us`` that lets None through."""
    return None if value is None else from_us(value)


def now_us() -> int:
    """The current time in stored form."""
    return to_us(utcnow(), "now")


def to_json(value: Mapping[str, Any] | None, what: str) -> str:
    """Canonical JSON of a mapping; ``InvalidInput`` naming ``what`` if it is not JSON data."""
    try:
        return json.dumps(dict(value or {}), separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        # the message names the offending type, never the value
        raise InvalidInput(f"{what} must be JSON data: {exc}") from None


def from_json(text: str) -> dict[str, Any]:
    """Inverse of ``to_json``."""
    value: dict[str, Any] = json.loads(text)
    return value


def seq_to_json(values: tuple[str, ...]) -> str:
    """A tuple of strings as a JSON array."""
    return json.dumps(list(values), separators=(",", ":"))


def seq_from_json(text: str) -> tuple[str, ...]:
    """Inverse of ``seq_to_json``."""
    return tuple(json.loads(text))


def sealed_from(ciphertext: bytes, wrapped_key: bytes, key_id: str) -> Sealed:
    """A ``Sealed`` from its three columns, bytes exactly as stored."""
    return Sealed(ciphertext=bytes(ciphertext), wrapped_key=bytes(wrapped_key), key_id=key_id)


E = TypeVar("E", bound=StrEnum)


def enum_value(kind: type[E], value: str, what: str) -> str:
    """The stored text of an enum member given as a member or its value; ``InvalidInput`` for
    anything else."""
    try:
        return kind(value).value
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidInput(f"{what} must be one of {allowed} (got {value!r})") from None
