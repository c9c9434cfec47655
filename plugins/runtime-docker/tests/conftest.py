"""Fixtures of the runtime-docker tests: a real, private dockerd for the session.

The engine fixture lives in the repository's ``tests/fixtures/dockerd.py`` (shared with the
``boxes`` plugin and the proxy's end-to-end tests); it is imported from
``tests/fixtures``, which pytest's ``pythonpath`` setting puts on ``sys.path``. It fails — never
skips — with the apt command when docker.io or busybox-static is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dockerd import docker_host, dockerd

from valetkey_runtime_docker.config import DockerConfig
from valetkey_runtime_docker.runtime import DockerRuntime

__all__ = ["docker_host", "dockerd"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def api(dockerd: Any) -> Iterator[Any]:
    """The raw docker SDK's low-level client on the test engine (to look behind the runtime)."""
    import docker

    client = docker.APIClient(base_url=dockerd.host, version="auto", timeout=60)
    yield client
    client.close()


@pytest.fixture
def make_runtime(dockerd: Any) -> Iterator[Callable[..., DockerRuntime]]:
    """``make_runtime(**config)``: a DockerRuntime on the test engine; closed afterwards."""
    made: list[DockerRuntime] = []

    def make(**config: Any) -> DockerRuntime:
        runtime = DockerRuntime(DockerConfig(**{"docker_host": dockerd.host, **config}))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        api = runtime._api
        if api is not None:
            api.close()


@pytest.fixture
def runtime(make_runtime: Callable[..., DockerRuntime]) -> DockerRuntime:
    """The runtime with a short stop timeout (the boxes here exit on SIGTERM anyway)."""
    return make_runtime(stop_timeout=2)
