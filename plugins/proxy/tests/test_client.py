"""The daemon's lifecycle through real processes: ensure_running starts exactly one daemon for
any number of concurrent callers (threads and processes), a killed daemon is replaced and gets
its runs back with the same tokens, idle shutdown, stop/status, start failures that quote the
daemon log, and a clear "not supported" from a daemon older than the client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from valetkey_hookspecs import NotFound
from valetkey_proxy import lockfile
from valetkey_proxy.client import (
    DaemonClient,
    DaemonUnavailable,
    NotSupported,
    ensure_running,
    running_client,
)

pytestmark = pytest.mark.slow


def _daemon_pids() -> set[int]:
    """Processes running ``valetkey proxy daemon`` (read from /proc, to count them)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if b"proxy" in argv and b"daemon" in argv and lockfile.pid_alive(int(entry)):
            pids.add((int(entry), environ))
    return pids


def _daemons_for(home) -> list[int]:
    marker = f"VALETKEY_HOME={home}".encode()
    return [pid for pid, environ in _daemon_pids() if marker in environ.split(b"\0")]


def test_ten_threads_start_one_daemon(env):
    def call(_):
        with ensure_running(env.home) as client:
            return client.health()["pid"]

    with ThreadPoolExecutor(10) as pool:
        pids = set(pool.map(call, range(10)))
    env.remember()
    assert len(pids) == 1
    assert _daemons_for(env.home) == list(pids)
    info = lockfile.read(env.paths.info)
    assert info is not None and info.pid in pids
    assert info.sock_path == str(env.paths.sock) and info.proxy_port > 0


def test_ten_processes_start_one_daemon(env):
    code = (
        "import sys; from pathlib import Path; from valetkey_proxy.client import ensure_running;"
        "c = ensure_running(Path(sys.argv[1])); print(c.health()['pid'])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(env.home)],
            env=env.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    env.remember()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    pids = {int(out.strip()) for out, _ in outs}
    assert len(pids) == 1
    assert _daemons_for(env.home) == list(pids)


def test_kill_9_restarts_with_the_same_tokens_and_no_secret_on_disk(env):
    secret = "sk-test-real-openai-key-0123456789"
    env.cli("key", "add", "openai", input=secret + "\n", check=True)
    client = ensure_running(env.home)
    env.remember()
    first, first_port = client.health()["pid"], client.health()["proxy_port"]
    a = client.register_run({"owner": "ann", "grants": ["openai"], "run_id": "agent-a"})
    b = client.register_run({"owner": "ann", "run_id": "agent-b"})
    assert a["env"]["OPENAI_API_KEY"].startswith("vkph_")
    deadline = time.monotonic() + 5
    while not env.paths.runs.exists() or "agent-b" not in env.paths.runs.read_text():
        assert time.monotonic() < deadline, "runs.json was not written"
        time.sleep(0.05)
    os.kill(first, signal.SIGKILL)
    assert env.wait_gone(first)
    client.close()

    client = ensure_running(env.home)
    env.remember()
    health = client.health()
    assert health["pid"] != first and health["restore_failures"] == []
    # the agents' proxy URLs still work: the new daemon took the old port back
    assert health["proxy_port"] == first_port
    assert {r["run_id"] for r in client.list_runs()} == {"agent-a", "agent-b"}
    # the old tokens are known (PATCH answers 200, not 404) and re-registering keeps them
    assert client.update_run(a["auth_token"], "c-1")["container_id"] == "c-1"
    again = client.register_run(
        {"owner": "ann", "grants": ["openai"], "auth_token": a["auth_token"]}
    )
    assert again["auth_token"] == a["auth_token"]
    assert again["env"] == a["env"]  # same placeholders after a restart
    client.unregister_run(b["auth_token"])
    with pytest.raises(NotFound):
        client.unregister_run(b["auth_token"])
    client.close()
    text = env.paths.runs.read_text()
    assert secret not in text and "sk-test" not in text
    assert (env.paths.runs.stat().st_mode & 0o777) == 0o600
    assert json.loads(text)["version"] == 1


def test_idle_daemon_exits_and_cleans_up(env):
    env.write_config(idle_timeout=1)
    client = ensure_running(env.home)
    env.remember()
    pid = client.health()["pid"]
    run = client.register_run({"owner": "ann"})
    time.sleep(1.5)
    assert lockfile.pid_alive(pid), "a daemon with a run must not go idle"
    client.unregister_run(run["auth_token"])
    client.close()
    assert env.wait_gone(pid, 10)
    assert not env.paths.info.exists() and not env.paths.sock.exists()


def test_starting_with_no_runs_arms_the_idle_timer(env):
    env.write_config(idle_timeout=1)
    client = ensure_running(env.home)
    env.remember()
    pid = client.health()["pid"]
    client.close()
    assert env.wait_gone(pid, 10)


def test_stale_lock_and_socket_are_replaced(env):
    env.paths.ensure()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lockfile.write(
        env.paths.info,
        lockfile.LockInfo(dead.pid, 1, str(env.paths.sock), "2020-01-01T00:00:00Z", "0"),
    )
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(env.paths.sock))
    leftover.close()  # a socket file nobody listens on
    assert lockfile.is_stale(lockfile.read(env.paths.info))
    with ensure_running(env.home) as client:
        env.remember()
        assert client.health()["pid"] != dead.pid
    assert lockfile.read(env.paths.info).pid != dead.pid


def test_cli_start_status_stop(env):
    assert env.cli("proxy", "status").returncode == 1
    assert json.loads(env.cli("proxy", "status", "--json").stdout) == {"running": False}
    started = env.cli("proxy", "start", "--json", check=True)
    health = json.loads(started.stdout)
    assert health["running"] is True and health["proxy_port"] > 0
    status = json.loads(env.cli("proxy", "status", "--json", check=True).stdout)
    assert status["pid"] == health["pid"]
    stopped = env.cli("proxy", "stop", check=True)
    assert f"pid {health['pid']}" in stopped.stdout
    assert not lockfile.pid_alive(health["pid"])
    assert not env.paths.sock.exists() and not env.paths.info.exists()
    assert "not running" in env.cli("proxy", "stop").stdout


def test_a_daemon_that_cannot_start_is_reported_with_its_log(env):
    env.write_config(port=70000)
    with pytest.raises(DaemonUnavailable) as caught:
        ensure_running(env.home, timeout=30)
    message = str(caught.value)
    assert "could not start the proxy daemon" in message
    assert "port" in message and "daemon.log" in message


def test_an_older_daemon_without_an_endpoint_is_not_supported(tmp_path):
    """An 'older daemon': a bare API with only /v1/health, on a real Unix socket."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def health(_request):
        return JSONResponse({"pid": 1, "proxy_port": 1, "run_count": 0, "version": "0.0.1"})

    path = tmp_path / "old.sock"
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=[Route("/v1/health", health)]), uds=str(path))
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with (
            DaemonClient(path) as client,
            pytest.raises(
                NotSupported, match=r"not supported by the running daemon \(version 0.0.1\)"
            ),
        ):
            client.register_routes("agent", {"web": "http://127.0.0.1:3000"})
    finally:
        server.should_exit = True
        thread.join(10)


def test_no_daemon_is_unavailable_not_a_traceback(tmp_path):
    assert running_client(tmp_path) is None
    with DaemonClient(tmp_path / "nothing.sock") as client, pytest.raises(DaemonUnavailable):
        client.health()
