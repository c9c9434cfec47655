"""Shared fixtures: every test runs with its own VALETKEY_HOME, config and caches, in an empty
working folder, with no OS keyring (tests that want the real Secret Service start one)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_fixture_module(name: str, relative: str):
    """Load a shared fixture module by path (tests run with --import-mode=importlib)."""
    import importlib.util

    module_name = f"valetkey_tests_fixtures_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        module_name, REPO / "tests" / "fixtures" / relative
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


oidc_fixture = _load_fixture_module("oidc", "oidc/oidc_fixture.py")
oidc_server = oidc_fixture.oidc_server
oidc = oidc_fixture.oidc


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("VALETKEY_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    for var in ("VALETKEY_CONFIG", "VALETKEY_PLUGINS", "VALETKEY_DISABLE_PLUGINS", "VALETKEY_KEK"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> RunCli:
    """Run the real ``valetkey`` CLI in a subprocess with the test's environment."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 60,
        check_rc: int | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "valetkey", *args],
            capture_output=True,
            text=True,
            env=full_env,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check_rc is not None:
            assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    return run


@pytest.fixture
def site_dir(tmp_path, monkeypatch) -> Path:
    """A folder on PYTHONPATH where tests install fake distributions (real entry points)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    )
    return site


@pytest.fixture
def install_plugin(site_dir) -> Callable[..., str]:
    """``install_plugin(name, source)``: a real installed distribution with one entry point."""
    return lambda name, source, module=None: _install(site_dir, name, source, module=module)


def _install(site: Path, name: str, source: str, *, module: str | None = None) -> str:
    module = module or "vk_test_" + name.replace("-", "_")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"valetkey_{name.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: valetkey-{name}\nVersion: 0.0.1\n"
    )
    (info / "entry_points.txt").write_text(f"[valetkey]\n{name} = {module}\n")
    return module
