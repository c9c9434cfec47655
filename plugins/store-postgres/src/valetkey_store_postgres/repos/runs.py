"""Proxy runs: grant names and network policy of agent runs, never credentials."""

from __future__ import annotations

import builtins
import json
from typing import Any

from valetkey_hookspecs.errors import NotFound
from valetkey_hookspecs.types import ProxyRun

from ..codec import from_json, from_us, to_json, to_us
from ..db import Database

COLUMNS = "id, owner, grants, policy, container_id, created_at, data"


def run_from(row: Any) -> ProxyRun:
    """A ``ProxyRun`` from a row."""
    return ProxyRun(
        id=row["id"],
        owner=row["owner"],
        grants=tuple(json.loads(row["grants"])),
        policy=from_json(row["policy"]),
        container_id=row["container_id"],
        created_at=from_us(row["created_at"]),
        data=from_json(row["data"]),
    )


class PostgresProxyRuns:
    """``ProxyRunRepo`` on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, run: ProxyRun) -> None:
        """Insert or replace (by id)."""
        await self._db.execute(
            f"INSERT INTO proxy_runs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, grants = excluded.grants, "
            "policy = excluded.policy, container_id = excluded.container_id, "
            "created_at = excluded.created_at, data = excluded.data",
            run.id,
            run.owner,
            json.dumps(list(run.grants), separators=(",", ":")),
            to_json(run.policy, f"policy of run {run.id!r}"),
            run.container_id,
            to_us(run.created_at, "run created_at"),
            to_json(run.data, f"data of run {run.id!r}"),
        )

    async def get(self, run_id: str) -> ProxyRun:
        """``NotFound`` if missing."""
        row = await self._db.fetchrow(f"SELECT {COLUMNS} FROM proxy_runs WHERE id = $1", run_id)
        if row is None:
            raise NotFound(f"proxy run {run_id!r} not found")
        return run_from(row)

    async def list(self) -> builtins.list[ProxyRun]:
        """Oldest first."""
        rows = await self._db.fetch(f"SELECT {COLUMNS} FROM proxy_runs ORDER BY created_at, id")
        return [run_from(row) for row in rows]

    async def delete(self, run_id: str) -> None:
        """No error if missing."""
        await self._db.execute("DELETE FROM proxy_runs WHERE id = $1", run_id)
