"""Fixtures of the sealer-local tests: in-memory secret stores, fake clocks, a log recorder."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest


class MemorySecrets:
    """A dict-backed SecretStore that counts reads and writes."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"MemorySecrets({len(self.data)} entries)"

    @property
    def description(self) -> str:
        return "memory"

    def get(self, key: str) -> str | None:
        self.reads[key] += 1
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.writes[key] += 1
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


@pytest.fixture
def secrets() -> MemorySecrets:
    return MemorySecrets()


class Monotonic:
    """A monotonic clock that moves only when told: ``clock.advance(seconds)``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WallClock:
    """A UTC wall clock that moves only when told: ``clock.advance(seconds)``."""

    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
def no_env_kek(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VALETKEY_KEK", raising=False)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def sealer_log() -> Iterator[Records]:
    logger = logging.getLogger("valetkey.sealer_local")
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class SlowSecrets(MemorySecrets):
    """A thread-safe MemorySecrets whose reads and writes take a while, like a D-Bus round trip,
    so that concurrent read-change-writes of the ring overlap; a write takes a random time (up
    to twice ``delay``), so concurrent writes land in either order."""

    def __init__(self, delay: float = 0.002, description: str = "slow memory") -> None:
        super().__init__()
        self.delay = delay
        self._description = description
        self._mutex = threading.Lock()

    @property
    def description(self) -> str:
        return self._description

    def get(self, key: str) -> str | None:
        with self._mutex:
            value = super().get(key)
        time.sleep(self.delay)
        return value

    def set(self, key: str, value: str) -> None:
        time.sleep(random.uniform(0, 2 * self.delay))
        with self._mutex:
            super().set(key, value)


@pytest.fixture
def new_secrets() -> type[SlowSecrets]:
    """``new_secrets(delay=0.002, description="slow memory")``: another, empty secret store."""
    return SlowSecrets
