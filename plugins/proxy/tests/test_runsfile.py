"""On-disk state of the daemon, in process: ``runs.json`` (versioned and legacy formats, atomic
0600 writes, debounced bursts, flush), the lock info, and the per-run request log."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import msgspec
import pytest

from valetkey_proxy import lockfile, runsfile
from valetkey_proxy.reqlog import RequestLog, follow, log_name
from valetkey_proxy.runs import Registry, Run, RunSpec

pytestmark = pytest.mark.anyio

T1, T2 = "11" * 32, "22" * 32


def _spec(run_id, token, **kw):
    return RunSpec(owner="ann", run_id=run_id, auth_token=token, **kw)


def test_versioned_file_round_trips(tmp_path):
    path = tmp_path / "runs.json"
    specs = [_spec("a", T1, grants=["github"], network_policy="strict", network_allow=["x.test"])]
    path.write_bytes(runsfile.encode(specs))
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["runs"][0]["grants"] == ["github"]
    assert runsfile.load(path) == (specs, [])


def test_legacy_bare_array_loads(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(
        json.dumps(
            [
                {"owner": "ann", "run_id": "a", "auth_token": T1, "grants": ["github"]},
                {"owner": "bob", "run_id": "b", "auth_token": T2, "future": {"x": 1}},
            ]
        )
    )
    specs, problems = runsfile.load(path)
    assert problems == []
    assert [(s.owner, s.run_id, s.auth_token, s.grants) for s in specs] == [
        ("ann", "a", T1, ["github"]),
        ("bob", "b", T2, []),
    ]


def test_bad_entries_are_skipped_and_reported(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"version": 1, "runs": [{"run_id": "no-owner"}, {"owner": "ann"}]}))
    specs, problems = runsfile.load(path)
    assert [s.owner for s in specs] == ["ann"]
    assert len(problems) == 1 and "run #0 skipped" in problems[0]
    path.write_text("{torn")
    assert runsfile.load(path)[0] == [] and "not valid JSON" in runsfile.load(path)[1][0]
    path.write_text(json.dumps({"version": 99, "runs": []}))
    assert "unsupported version" in runsfile.load(path)[1][0]
    assert runsfile.load(tmp_path / "missing.json") == ([], [])


async def test_debounce_coalesces_a_burst_into_one_write(tmp_path):
    registry = Registry()
    path = tmp_path / "proxy" / "runs.json"
    persist = runsfile.RunsFile(path, lambda: [r.persisted() for r in registry], debounce=0.1)
    registry.subscribe(lambda _e, _r: persist.changed())
    for i in range(50):
        registry.add(Run(spec=RunSpec(owner="ann"), token=f"{i:064x}", run_id=f"r{i}"))
    assert persist.writes == 0
    await asyncio.sleep(0.3)
    assert persist.writes == 1
    assert len(json.loads(path.read_text())["runs"]) == 50
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    # a later change is a second write; flush writes at once and cancels the pending one
    registry.remove(f"{0:064x}")
    await persist.flush()
    assert persist.writes == 2 and len(json.loads(path.read_text())["runs"]) == 49
    await asyncio.sleep(0.2)
    assert persist.writes == 2


async def test_persisted_runs_carry_tokens_and_grant_names_only(tmp_path):
    registry = Registry()
    run = Run(spec=RunSpec(owner="ann", grants=["github"]), token=T1, run_id="r")
    run.container_id = "c1"
    run.resolved = {"secret": "ghp_real_credential"}  # what the gate holds, never persisted
    registry.add(run)
    path = tmp_path / "runs.json"
    await runsfile.RunsFile(path, lambda: [r.persisted() for r in registry]).flush()
    text = path.read_text()
    assert "ghp_real_credential" not in text
    (saved,) = msgspec.json.decode(text.encode())["runs"]
    assert saved == {
        "owner": "ann",
        "run_id": "r",
        "auth_token": T1,
        "grants": ["github"],
        "container_id": "c1",
    }


def test_lock_info_round_trip_and_staleness(tmp_path):
    path = tmp_path / "daemon.json"
    assert lockfile.read(path) is None
    info = lockfile.LockInfo(123, 8080, str(tmp_path / "s.sock"), "2025-01-01T00:00:00Z", "1")
    lockfile.write(path, info)
    assert lockfile.read(path) == info and (path.stat().st_mode & 0o777) == 0o600
    assert lockfile.is_stale(info)  # no socket answers there
    lockfile.remove(path, pid=999)  # someone else's: kept
    assert path.exists()
    lockfile.remove(path, pid=123)
    assert not path.exists()
    path.write_text("{torn")
    assert lockfile.read(path) is None


def test_request_log_buffers_then_flushes_0600(tmp_path):
    log = RequestLog(tmp_path / "logs", flush_interval=0.05)
    started = time.perf_counter()
    for i in range(100):
        log.record("run_a", {"i": i, "injected": {"Authorization": "[REDACTED]"}})
    assert time.perf_counter() - started < 0.5  # recording never waits on disk
    log.record("../../escape", {"i": -1})
    deadline = time.monotonic() + 5
    path = tmp_path / "logs" / "run_a.jsonl"
    while not path.exists() or len(path.read_text().splitlines()) < 100:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (path.stat().st_mode & 0o777) == 0o600
    log.close()
    log.record("run_a", {"i": "after close"})  # dropped
    entries = list(follow(path))
    assert [e["i"] for e in entries] == list(range(100))
    escaped = log_name("../../escape")
    assert "/" not in escaped and not escaped.startswith(".")
    # the odd run id was written inside logs/, and nothing appeared anywhere else
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(["run_a.jsonl", escaped])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert not (tmp_path.parent / "escape.jsonl").exists()
    assert next(iter(follow("run_a", folder=tmp_path / "logs")))["i"] == 0


def test_follow_waits_for_new_entries(tmp_path):
    log = RequestLog(tmp_path, flush_interval=0.02)
    log.record("r", {"n": 1})
    log.flush()
    done = threading.Event()
    got = []

    def reader():
        for entry in follow(tmp_path / "r.jsonl", follow=True, stop=done.is_set):
            got.append(entry["n"])

    thread = threading.Thread(target=reader)
    thread.start()
    log.record("r", {"n": 2})
    deadline = time.monotonic() + 5
    while got != [1, 2]:
        assert time.monotonic() < deadline, got
        time.sleep(0.02)
    done.set()
    thread.join(5)
    log.close()
