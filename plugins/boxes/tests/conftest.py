"""Fixtures of the boxes tests: a kernel on a temp home with the workspace's real store, sealer,
secret store and the docker box runtime against a real, private dockerd (tests/fixtures/dockerd.py,
on pytest's pythonpath; it fails with the apt command when docker.io or busybox-static is
missing)."""

from __future__ import annotations

import pytest
from dockerd import docker_host, dockerd  # tests/fixtures (on pythonpath)

from valetkey.kernel import load
from valetkey.policy import parse_policy

__all__ = ["docker_host", "dockerd"]

WORKSPACE = ["store-sqlite", "secrets-keyring", "sealer-local", "runtime-docker", "boxes"]

#: a login like an agent CLI's: print a sign-in URL, read the code, say ready with a session URL
LOGIN = (
    "echo 'Open https://login.example.test/device?session=abc to sign in'; "
    "while read code; do "
    'case "$code" in bad*) echo "error: invalid code"; echo "paste another code" ;; '
    '*) echo "checking $code"; echo valetkey-ready; '
    "echo 'session: https://session.example.test/s/42'; break ;; esac; done; "
    "exec sleep 3600"
)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "home"


@pytest.fixture
def boxes_config(dockerd):
    return {
        "default_image": dockerd.image,
        "auth_ttl": 300.0,
        "login": {"*": {"command": ["sh", "-c", LOGIN], "ready_timeout": 10.0}},
    }


@pytest.fixture
def make_kernel(home, docker_host, boxes_config):
    def make(extra_plugins=None, **boxes):
        doc = {
            "autoload": False,
            "enable": [*WORKSPACE, *(extra_plugins or {})],
            "plugin": {
                "boxes": {**boxes_config, **boxes},
                "runtime-docker": {"stop_timeout": 1},
            },
        }
        return load(policy=parse_policy(doc), home=home, extra_plugins=extra_plugins or {})

    return make


@pytest.fixture
async def kernel(make_kernel):
    k = make_kernel()
    async with k:
        yield k
