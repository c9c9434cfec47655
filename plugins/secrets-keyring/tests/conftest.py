"""Fixtures of the secrets-keyring tests.

The real Secret Service fixtures live in the repository's ``tests/fixtures/secret_service.py``
(shared with other plugins that use the OS keyring); they are loaded here by path, since the
tests run with ``--import-mode=importlib`` and ``tests/`` is not a package on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load_shared(name: str) -> ModuleType:
    module_name = f"valetkey_tests_fixtures_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


_secret_service = _load_shared("secret_service")
secret_service_bus = _secret_service.secret_service_bus
secret_service = _secret_service.secret_service


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
