"""Fixtures of the sealer-local tests: an in-memory secret store, fake clocks, a log recorder."""

from __future__ import annotations

import logging
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
