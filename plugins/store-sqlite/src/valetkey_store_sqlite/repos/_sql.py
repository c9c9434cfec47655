"""Small helpers the repositories share to build SQL from constant pieces.

Only column names written in this package ever reach SQL text; every value is a bound parameter.
"""

from __future__ import annotations

from typing import Any


def where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """``WHERE a = ? AND b = ?`` for the filters whose value is not None (keys are trusted
    column expressions such as ``"owner = ?"``), and their parameters."""
    clauses = [column for column, value in filters.items() if value is not None]
    params = [value for value in filters.values() if value is not None]
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
