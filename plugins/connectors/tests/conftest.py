"""Every connectors test runs with its own config, state and cache folders (never the real
``~/.config/valetkey/connectors``), in an empty working folder, with fresh plugin caches."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from valetkey_connectors import config, loader


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("VALETKEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    for var in ("VALETKEY_CONFIG", "VALETKEY_PLUGINS", "VALETKEY_DISABLE_PLUGINS", "VALETKEY_KEK"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    loader.clear_cache()
    config.bind(None)
    yield work
    loader.clear_cache()
    config.bind(None)


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """``$XDG_CONFIG_HOME/valetkey/connectors``, created."""
    folder = tmp_path / "config" / "valetkey" / "connectors"
    folder.mkdir(parents=True)
    return folder


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(isolated: Path) -> RunCli:
    """Run the real ``valetkey`` CLI in a subprocess, in the test's folders."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "valetkey", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=isolated,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture
def acme_toml() -> str:
    """A valid API-key connector file (its slug comes from the file name)."""
    return ACME


ACME = """\
name = "Acme"
description = "Acme API"
docs_url = "https://docs.acme.example/api"

[auth]
type = "api_key"

[injection]
hosts = ["api.acme.example"]
header = "Authorization"
format = "Bearer {token}"
env_var = "ACME_API_KEY"

[rate]
requests = 60
per_seconds = 60
"""
