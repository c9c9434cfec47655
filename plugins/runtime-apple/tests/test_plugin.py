"""The plugin as the kernel loads it: the ``apple`` runtime registered (never the default), its
config table, the "untested on a real engine" note in ``plugins list``, and the doctor."""

from __future__ import annotations

import sys
import tomllib

import pytest

import valetkey_runtime_apple
from valetkey.cli.plugins_cmd import plugin_rows
from valetkey.kernel import load
from valetkey.policy import parse_policy
from valetkey_hookspecs.errors import ConfigError, RuntimeUnavailable
from valetkey_runtime_apple.runtime import AppleRuntime

pytestmark = pytest.mark.anyio


def kernel(tmp_path, extra: str = ""):
    doc = tomllib.loads(f'autoload = false\nenable = ["runtime-apple"]\n{extra}')
    return load(policy=parse_policy(doc), home=tmp_path, tolerant=True)


def test_plugins_list_shows_the_untested_note(tmp_path):
    rows = {row["name"]: row for row in plugin_rows(kernel(tmp_path))}
    row = rows["runtime-apple"]
    assert "untested on a real engine" in row["notes"]
    assert row["provides"] == {"box_runtime": ["apple"]}


async def test_the_runtime_is_built_from_its_config(tmp_path):
    k = kernel(tmp_path, '[plugin.runtime-apple]\nmax_boxes = 3\ncpus = 1.5\nbinary = "ctr"\n')
    runtime = k.runtime("apple")
    assert isinstance(runtime, AppleRuntime)
    assert (runtime.name, runtime.max_boxes, runtime.cpus, runtime.binary) == ("apple", 3, 1.5,
                                                                               "ctr")  # fmt: skip
    if sys.platform != "darwin":
        with pytest.raises(RuntimeUnavailable, match="macOS only"):
            await runtime.list()


def test_bad_config_is_a_config_error(tmp_path):
    k = kernel(tmp_path, "[plugin.runtime-apple]\nmax_boxes = 0\n")
    with pytest.raises(ConfigError, match="max_boxes"):
        k.runtime("apple")


def test_doctor_reports_the_missing_engine_when_apple_is_selected(tmp_path):
    selected = kernel(tmp_path, '[select]\nbox_runtime = "apple"\n')
    problems = [p for p in selected.doctor() if "runtime-apple" in p]
    if sys.platform != "darwin":
        assert problems and "macOS only" in problems[0]


def test_doctor_is_quiet_when_another_runtime_is_selected():
    class Driver:
        name = "docker"

    class Kernel:
        def selected(self, kind):
            return Driver()

    assert valetkey_runtime_apple.valetkey_doctor(Kernel()) is None  # type: ignore[arg-type]
