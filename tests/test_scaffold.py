"""``valetkey plugins new``: the generated plugin installs into a fresh virtual environment, shows
in ``plugins list`` and passes its own generated tests (the conformance kit)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from valetkey.scaffold import KINDS

from .conftest import REPO


def test_bad_kind_name_and_existing_folder_write_nothing(run_cli, tmp_path):
    target = tmp_path / "p"
    proc = run_cli("plugins", "new", "widget", "acme", "--dir", str(target))
    assert (proc.returncode, proc.stderr.strip()) == (
        2,
        "valetkey: error: unknown plugin kind 'widget' (choose from: connector, notifier)",
    )
    for bad in ("Acme", "acme-", "acme--x", "acme_x", "9acme", "a" * 41):
        proc = run_cli("plugins", "new", "connector", bad, "--dir", str(target))
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"valetkey: error: invalid plugin name {bad!r}")
    assert not target.exists()
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    proc = run_cli("plugins", "new", "connector", "acme", "--dir", str(target))
    assert proc.returncode == 2
    assert "exists and is not empty (use --force to write into it)" in proc.stderr
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_generated_plugin_installs_loads_and_passes_its_tests(tmp_path, kind):
    """valetkey installed from its built wheels (so the template shipped inside the wheel is
    what renders), the generated plugin installed editable, as its author would."""
    uv = shutil.which("uv")
    assert uv, "uv is needed (scripts/test-deps installs it)"
    target = tmp_path / "plugin"
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True, env=env)
    py = str(venv / "bin" / "python")
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", py, str(REPO / "hookspecs"), str(REPO / "core")],
        check=True,
        env=env,
        timeout=300,
    )
    new = [
        str(venv / "bin" / "valetkey"),
        "plugins",
        "new",
        kind,
        "acme-tools",
        "--dir",
        str(target),
    ]
    subprocess.run(new, check=True, env=env, capture_output=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", py, "-e", f"{target}[test]"],
        check=True,
        env=env,
        timeout=300,
    )
    listed = subprocess.run(
        [str(venv / "bin" / "valetkey"), "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["acme-tools"]["loaded"], rows["acme-tools"]
    assert rows["acme-tools"]["distribution"] == "valetkey-acme-tools"
    expected_kind = {"connector": "connectors", "notifier": "notifier"}[kind]
    assert rows["acme-tools"]["kinds"] == [expected_kind]
    tests = subprocess.run(
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=target,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout and "failed" not in tests.stdout
