"""Liveness rules against a box runtime TEST DOUBLE (the docker runtime plugin does not exist
yet): a confirmed-dead container removes its run at once, transient errors need 3 in a row, a
success resets the count, runs without a container are never checked, and a kernel with no box
runtime turns liveness off with one log line. Also the idle timer's registry wiring."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from valetkey.kernel import load
from valetkey.policy import parse_policy
from valetkey_hookspecs import hookimpl
from valetkey_proxy.idle import IdleTimer
from valetkey_proxy.liveness import MAX_FAILURES, LivenessChecker
from valetkey_proxy.runs import Registry, Run, RunSpec

pytestmark = pytest.mark.anyio


class FakeBoxRuntime:
    """TEST DOUBLE of a BoxRuntime: ``is_alive`` answers from ``states`` (True, False, or an
    exception to raise); every other method is unused by liveness."""

    name = "fake"

    def __init__(self):
        self.states = {}
        self.calls = []

    async def is_alive(self, container_id):
        self.calls.append(container_id)
        state = self.states.get(container_id, True)
        if isinstance(state, BaseException):
            raise state
        return state

    async def close(self):
        return None


def _run(registry, n, container=None):
    run = Run(spec=RunSpec(owner="ann"), token=f"{n:064x}", run_id=f"r{n}")
    run.container_id = container
    registry.add(run)
    return run


async def test_dead_container_is_removed_at_once():
    registry, runtime = Registry(), FakeBoxRuntime()
    removed = []
    checker = LivenessChecker(
        registry, runtime=runtime, on_removed=lambda run, why: removed.append((run.run_id, why))
    )
    _run(registry, 1, "c-dead")
    _run(registry, 2, "c-alive")
    _run(registry, 3)  # no container: never checked
    runtime.states["c-dead"] = False
    gone = await checker.check_once()
    assert [r.run_id for r in gone] == ["r1"]
    assert removed == [("r1", "container c-dead is gone")]
    assert {r.run_id for r in registry} == {"r2", "r3"}
    assert sorted(runtime.calls) == ["c-alive", "c-dead"]


async def test_transient_errors_need_three_in_a_row_and_success_resets():
    registry, runtime = Registry(), FakeBoxRuntime()
    checker = LivenessChecker(registry, runtime=runtime)
    run = _run(registry, 1, "c-flaky")
    runtime.states["c-flaky"] = RuntimeError("docker: connection reset")
    for _ in range(MAX_FAILURES - 1):
        assert await checker.check_once() == []
    assert run.liveness_failures == MAX_FAILURES - 1
    runtime.states["c-flaky"] = True  # a success resets the count
    await checker.check_once()
    assert run.liveness_failures == 0 and registry.lookup(run.token) is run
    runtime.states["c-flaky"] = RuntimeError("again")
    for _ in range(MAX_FAILURES - 1):
        await checker.check_once()
    assert registry.lookup(run.token) is run
    assert [r.run_id for r in await checker.check_once()] == ["r1"]
    assert registry.lookup(run.token) is None


async def test_a_hanging_check_counts_as_a_transient_failure():
    registry = Registry()

    class Hanging(FakeBoxRuntime):
        async def is_alive(self, container_id):
            await asyncio.sleep(10)

    checker = LivenessChecker(registry, runtime=Hanging(), timeout=0.05)
    run = _run(registry, 1, "c-slow")
    await checker.check_once()
    assert run.liveness_failures == 1


async def test_a_run_replaced_during_the_check_is_left_alone():
    registry = Registry()

    class Replacing(FakeBoxRuntime):
        async def is_alive(self, container_id):
            _run(registry, 1, "c-new")  # re-registered with the same token meanwhile
            return False

    checker = LivenessChecker(registry, runtime=Replacing())
    _run(registry, 1, "c-old")
    assert await checker.check_once() == []
    assert registry.lookup(f"{1:064x}").container_id == "c-new"


class BoxPlugin:
    def __init__(self, runtime):
        self.runtime = runtime

    @hookimpl
    def valetkey_register_box_runtimes(self, register):
        register("fake", lambda ctx: self.runtime)


def _kernel(tmp_path, monkeypatch, **extra):
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    enable = ["store-sqlite", "secrets-keyring", "sealer-local", *extra]
    return load(
        policy=parse_policy({"autoload": False, "enable": enable}),
        home=tmp_path / "home",
        extra_plugins=extra,
    )


async def test_the_kernels_box_runtime_is_used(tmp_path, monkeypatch):
    runtime = FakeBoxRuntime()
    kernel = _kernel(tmp_path, monkeypatch, **{"fake-runtime": BoxPlugin(runtime)})
    registry = Registry()
    checker = LivenessChecker(registry, kernel=kernel)
    _run(registry, 1, "c-gone")
    runtime.states["c-gone"] = False
    assert [r.run_id for r in await checker.check_once()] == ["r1"]
    assert checker.enabled


async def test_no_box_runtime_turns_liveness_off_with_one_log_line(tmp_path, monkeypatch, caplog):
    kernel = _kernel(tmp_path, monkeypatch)
    registry = Registry()
    checker = LivenessChecker(registry, kernel=kernel, interval=0.01)
    _run(registry, 1, "c-1")
    with caplog.at_level(logging.WARNING, logger="valetkey.proxy.liveness"):
        task = asyncio.ensure_future(checker.run_forever())  # keeps going: client pids
        await asyncio.sleep(0.1)
        await checker.check_once()
        task.cancel()
    assert not checker.enabled and len(registry) == 1
    lines = [r for r in caplog.records if "liveness checks are off" in r.getMessage()]
    assert len(lines) == 1


async def test_a_run_whose_client_process_is_gone_is_removed_without_a_runtime(
    tmp_path, monkeypatch
):
    import subprocess
    import sys

    from valetkey_proxy.runs import RunSpec, process_started

    kernel = _kernel(tmp_path, monkeypatch)
    registry = Registry()
    checker = LivenessChecker(registry, kernel=kernel, interval=0.01)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = process_started(child.pid)
    mine = process_started(os.getpid())
    gone = Run(RunSpec(owner="ann", client_pid=child.pid, client_started=started), "a" * 64, "r1")
    alive = Run(RunSpec(owner="ann", client_pid=os.getpid(), client_started=mine), "b" * 64, "r2")
    reused = Run(RunSpec(owner="ann", client_pid=os.getpid(), client_started=1), "c" * 64, "r3")
    for run in (gone, alive, reused):
        registry.add(run)
    assert await checker.check_once() == [reused]  # same pid, another start time: not it
    child.kill()
    child.wait()
    assert await checker.check_once() == [gone]
    assert [r.run_id for r in registry] == ["r2"]


async def test_idle_timer_follows_the_registry():
    fired = asyncio.Event()
    registry = Registry()
    timer = IdleTimer(0.1, fired.set)
    timer.watch(registry)
    assert timer.armed  # starting empty arms it
    run = _run(registry, 1)
    assert not timer.armed  # a registration cancels it
    await asyncio.sleep(0.2)
    assert not fired.is_set()
    registry.remove(run.token)
    assert timer.armed
    await asyncio.wait_for(fired.wait(), 2)
