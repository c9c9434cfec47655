"""Small helpers the repositories share to build SQL from constant pieces.

Only column names written in this package ever reach SQL text; every value is a bound parameter
(``$1``, ``$2``, ... numbered here).
"""

from __future__ import annotations

from typing import Any


def where(filters: dict[str, Any], start: int = 1) -> tuple[str, list[Any]]:
    """``WHERE a = $1 AND b = $2`` for the filters whose value is not None (keys are trusted
    column expressions with one ``{}`` for the placeholder, e.g. ``"owner = {}"``) and their
    parameters, numbered from ``start``."""
    clauses, params = [], []
    for column, value in filters.items():
        if value is None:
            continue
        params.append(value)
        clauses.append(column.format(f"${start + len(params) - 1}"))
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def placeholders(count: int, start: int = 1) -> str:
    """``$1, $2, ... $count``."""
    return ", ".join(f"${n}" for n in range(start, start + count))
