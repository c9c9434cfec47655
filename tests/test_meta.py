"""Meta tests (datasette's idea): every hookspec is documented in docs/plugin-hooks.md with its
exact signature, and referenced by at least one test."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from valetkey_hookspecs import hookspecs

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("valetkey_"))


def test_there_are_hooks():
    assert len(HOOKS) >= 12


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    docs = (REPO / "docs" / "plugin-hooks.md").read_text()
    assert f"\n## {hook}({args})\n" in docs


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    me = Path(__file__).resolve()
    sources = [
        p for p in REPO.glob("**/tests/**/*.py") if p.resolve() != me and ".venv" not in p.parts
    ]
    assert any(hook in p.read_text() for p in sources), f"no test mentions {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_has_a_param_docstring(hook):
    fn = getattr(hookspecs, hook)
    doc = inspect.getdoc(fn) or ""
    assert "versionadded" in doc
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"{hook} does not document {param}"
