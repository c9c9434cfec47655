"""Repository-wide test settings: async tests run on asyncio only (the loop valetkey serves on).

anyio's pytest plugin runs each ``@pytest.mark.anyio`` test on every installed backend; trio is
installed here as a dependency of the test tools (selenium), not because valetkey supports it.
A conftest fixture overrides the plugin's, so this one applies everywhere below.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
