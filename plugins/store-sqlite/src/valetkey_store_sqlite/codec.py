"""Conversions between domain values and SQLite columns: the forms every SQL store shares
(``valetkey_hookspecs.sqlcodec``), re-exported for this store's repositories."""

from __future__ import annotations

from valetkey_hookspecs.sqlcodec import (
    EPOCH,
    enum_value,
    from_json,
    from_us,
    now_us,
    opt_from_us,
    opt_to_us,
    sealed_from,
    seq_from_json,
    seq_to_json,
    to_json,
    to_us,
)

__all__ = [
    "EPOCH",
    "enum_value",
    "from_json",
    "from_us",
    "now_us",
    "opt_from_us",
    "opt_to_us",
    "sealed_from",
    "seq_from_json",
    "seq_to_json",
    "to_json",
    "to_us",
]
