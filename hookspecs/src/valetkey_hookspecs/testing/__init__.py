"""The valetkey conformance kit: abstract contract tests every implementation subclasses.

Opt in from a plugin's tests (``pytest -p valetkey_hookspecs.testing`` or
``pytest_plugins = ["valetkey_hookspecs.testing"]``), then subclass a contract and override its
fixtures, the way fsspec's abstract tests work::

    from valetkey_hookspecs.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path):
            s = MyStore(tmp_path / "db")
            await s.open()
            yield s
            await s.close()

Contracts: ``StoreContract``, ``SecretStoreContract``, ``SealerContract``, ``ConnectorContract``,
``BoxRuntimeContract``, ``NotifierContract``, and ``PluginContract`` (generic checks of a plugin's
entry point, registration, config schema and secret redaction). Async tests run on asyncio
through anyio's pytest plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .box_runtime import BoxRuntimeContract
    from .connector import ConnectorContract
    from .notifier import NotifierContract
    from .plugin import PluginContract
    from .sealer import SealerContract
    from .secret_store import SecretStoreContract
    from .store import StoreContract

_CONTRACTS = {
    "StoreContract": "store",
    "SecretStoreContract": "secret_store",
    "SealerContract": "sealer",
    "ConnectorContract": "connector",
    "BoxRuntimeContract": "box_runtime",
    "NotifierContract": "notifier",
    "PluginContract": "plugin",
}


def __getattr__(name: str) -> Any:
    module = _CONTRACTS.get(name)
    if module is None:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)


@pytest.fixture
def anyio_backend() -> str:
    """Contracts run on asyncio (the backend valetkey serves on)."""
    return "asyncio"


__all__ = [
    "BoxRuntimeContract",
    "ConnectorContract",
    "NotifierContract",
    "PluginContract",
    "SealerContract",
    "SecretStoreContract",
    "StoreContract",
    "anyio_backend",
]
