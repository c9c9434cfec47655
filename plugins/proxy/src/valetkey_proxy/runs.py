"""Runs: what ``POST /v1/runs`` registers (a :class:`RunSpec`: grant names and policy, never a
credential), and the in-memory :class:`Registry` of live runs keyed by their proxy auth token.

A run's grants are resolved (``gate.py``) *before* it enters the registry, so its token is never
accepted half set up. The registry itself is plain dict operations on the event loop's thread.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

#: the proxy auth token: 32 random bytes, hex
TOKEN_HEX_LEN = 64


class McpServerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A remote MCP server the run reaches at ``/mcp/{run}/{name}`` with a grant injected."""

    name: str
    url: str
    grant: str | None = None


class AwsSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """An ``aws`` grant: container credentials from an assumed role."""

    role_arn: str
    region: str = "us-east-1"
    session_duration: int = 3600
    external_id: str | None = None


class TransformerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A response transformer kind applied to responses from ``host``."""

    host: str
    kind: str


class RunSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=True):
    """The body of ``POST /v1/runs`` and one entry of ``runs.json``. Unknown fields are ignored
    (additive-only API: a newer client may send more)."""

    owner: str
    run_id: str = ""
    #: re-registration after a daemon restart: keep this token
    auth_token: str | None = None
    #: connector slugs or connection ids of ``owner``
    grants: list[str] = msgspec.field(default_factory=list)
    #: ``permissive`` (default) or ``strict``
    network_policy: str = "permissive"
    #: host patterns allowed under ``strict`` (granted hosts are always allowed)
    network_allow: list[str] = msgspec.field(default_factory=list)
    mcp_servers: list[McpServerSpec] = msgspec.field(default_factory=list)
    aws: AwsSpec | None = None
    response_transformers: list[TransformerSpec] = msgspec.field(default_factory=list)
    #: ``response-scrub`` on every host of every grant
    scrub: bool = False
    #: where placeholders are swapped for the real value on a granted host: ``headers`` (the
    #: default) or ``anywhere`` (path, query and body too — an API that echoes or stores what it
    #: is sent could then hand the real value back, so this is opt-in)
    substitution: str = "headers"
    container_id: str | None = None
    #: the process that registered the run and waits for it (``valetkey run``): when it is gone
    #: (even killed with SIGKILL) the liveness check removes the run
    client_pid: int | None = None
    #: that process's start time (``/proc/<pid>/stat`` field 22), so a reused pid is not taken
    #: for it
    client_started: int | None = None


def process_started(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def process_alive(pid: int, started: int | None) -> bool:
    """Is ``pid`` still the process that started at ``started``?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if started is None:
        return True
    now = process_started(pid)
    return now is None or now == started


def new_token() -> str:
    """A fresh proxy auth token (64 hex characters)."""
    return secrets.token_hex(TOKEN_HEX_LEN // 2)


def new_run_id() -> str:
    """A run id for a run registered without one."""
    return "run_" + secrets.token_hex(6)


def is_token(value: str) -> bool:
    """64 lower-case hex characters."""
    return len(value) == TOKEN_HEX_LEN and all(c in "0123456789abcdef" for c in value)


def placeholder_for(token: str, grant: str, prefix: str = "") -> str:
    """The stand-in value a run's agent holds for ``grant``: derived from the run's token so a
    restored run gets the same placeholders, and useless anywhere but through this proxy."""
    digest = hashlib.sha256(f"valetkey-placeholder:{token}:{grant}".encode()).hexdigest()[:40]
    return f"{prefix}vkph_{digest}"


@dataclass
class Run:
    """A registered run: its spec, token and whatever the gate resolved for it."""

    spec: RunSpec
    token: str
    run_id: str
    registered_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    container_id: str | None = None
    #: set by the gate when the run is prepared (grant bindings, policy, transformers)
    resolved: Any = None
    #: liveness: transient check failures in a row
    liveness_failures: int = 0

    def info(self) -> dict[str, Any]:
        """``GET /v1/runs`` element: no token, no credential."""
        return {
            "run_id": self.run_id,
            "owner": self.spec.owner,
            "grants": list(self.spec.grants),
            "network_policy": self.spec.network_policy,
            "container_id": self.container_id,
            "registered_at": self.registered_at.isoformat(),
        }

    def persisted(self) -> RunSpec:
        """What ``runs.json`` keeps: the spec with the token, run id and container id."""
        return msgspec.structs.replace(
            self.spec, auth_token=self.token, run_id=self.run_id, container_id=self.container_id
        )


class Registry:
    """Live runs by token. Listeners hear every change (persistence, idle timer, logs)."""

    def __init__(self) -> None:
        self._by_token: dict[str, Run] = {}
        self._listeners: list[Callable[[str, Run], None]] = []

    def __len__(self) -> int:
        return len(self._by_token)

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._by_token.values()))

    def subscribe(self, listener: Callable[[str, Run], None]) -> None:
        """``listener(event, run)`` with event ``added``, ``removed`` or ``updated``."""
        self._listeners.append(listener)

    def _emit(self, event: str, run: Run) -> None:
        for listener in self._listeners:
            listener(event, run)

    def lookup(self, token: str) -> Run | None:
        """The run holding ``token``."""
        return self._by_token.get(token)

    def by_id(self, run_id: str) -> Run | None:
        """The run with this id (run ids are unique among live runs)."""
        for run in self._by_token.values():
            if run.run_id == run_id:
                return run
        return None

    def add(self, run: Run) -> None:
        """Add (or replace, on re-registration with the same token) a fully prepared run."""
        self._by_token[run.token] = run
        self._emit("added", run)

    def remove(self, token: str) -> Run | None:
        """Remove by token; None when unknown."""
        run = self._by_token.pop(token, None)
        if run is not None:
            self._emit("removed", run)
        return run

    def set_container(self, token: str, container_id: str | None) -> Run | None:
        """Record the run's container (for liveness checks); None when the token is unknown."""
        run = self._by_token.get(token)
        if run is not None:
            run.container_id = container_id
            self._emit("updated", run)
        return run
