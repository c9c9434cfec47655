"""Fixtures of the secrets-keyring tests.

The real Secret Service fixtures live in the repository's ``tests/fixtures/secret_service.py``
(shared with other plugins that use the OS keyring); they are imported from
``tests/fixtures``, which pytest's ``pythonpath`` setting puts on ``sys.path``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from secret_service import secret_service, secret_service_bus

__all__ = ["secret_service", "secret_service_bus"]


@pytest.fixture
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> Any:
    """keyring with no backend at all (what a CI runner or a container has): fail.Keyring."""
    import keyring
    import keyring.core
    from keyring.backends import fail

    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    backend = fail.Keyring()
    keyring.set_keyring(backend)
    return backend


class Records(logging.Handler):
    """Collects the records of one logger (independent of pytest's root-logger capture)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def plugin_log() -> Iterator[Records]:
    """Records of the ``valetkey.secrets_keyring`` logger during one test."""
    logger = logging.getLogger("valetkey.secrets_keyring")
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
