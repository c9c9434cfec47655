"""Relay (issue 7): MCP ``tools/call`` through the relay vs directly to the local ``/mcp``, in the
same run, with real processes on 127.0.0.1:

- ``valetkey relay host`` (rate limit raised out of the way through its plugins.toml),
- ``valetkey serve`` (the local ``/mcp``),
- ``valetkey relay attach`` + ``valetkey relay serve`` (the machine side),

and mcp's own ``Client`` over streamable HTTP as the caller, calling ``valetkey_status``:

1. latency: N sequential calls on one session, relay vs direct (p50 / p90 / p99);
2. throughput: rounds of C concurrent calls on one session (default 100: every call must
   complete without error), calls per second, relay vs direct.

    uv run python bench/relay_mcp.py [--n 500] [--concurrency 100] [--rounds 10]

Everything runs in a temp folder removed at the end; no token is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST_CONFIG = """\
required = ["store-sqlite", "sealer-local", "secrets-keyring"]
[plugin.relay-server]
rate_per_second = 1000000.0
burst = 1000000
"""


class Background:
    """A ``valetkey`` process in the background; its stderr lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "valetkey", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"no {pattern!r}: " + "\n".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def env_for(base: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VALETKEY_CONFIG"}
    env.update(
        VALETKEY_HOME=str(base / "home"),
        XDG_CONFIG_HOME=str(base / "config"),
        XDG_CACHE_HOME=str(base / "cache"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        **extra,
    )
    return env


def run(args: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "valetkey", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"valetkey {' '.join(args[:3])} failed: {proc.stderr}")
    return proc.stdout


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, token: str | None, n: int, concurrency: int, rounds: int) -> dict:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60, limits=limits) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        for _ in range(20):  # warm up
            await client.call_tool("valetkey_status", {})
        latencies = []
        for _ in range(n):
            started = time.perf_counter()
            result = await client.call_tool("valetkey_status", {})
            latencies.append(time.perf_counter() - started)
            assert not result.is_error
        walls = []
        failed = 0
        for _ in range(rounds):
            started = time.perf_counter()
            results = await asyncio.gather(
                *(client.call_tool("valetkey_status", {}) for _ in range(concurrency)),
                return_exceptions=True,
            )
            walls.append(time.perf_counter() - started)
            failed += sum(1 for r in results if isinstance(r, BaseException) or r.is_error)
    return {
        "p50": statistics.median(latencies) * 1000,
        "p90": percentile(latencies, 0.9) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "calls_per_s": concurrency * rounds / sum(walls),
        "failed": failed,
        "completed": concurrency * rounds - failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="sequential calls per target")
    parser.add_argument("--concurrency", type=int, default=100, help="concurrent calls per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of concurrent calls")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="valetkey-bench-relay-"))
    procs: list[Background] = []
    try:
        host_dir, machine_dir = tmp / "host", tmp / "machine"
        host_dir.mkdir()
        machine_dir.mkdir()
        (host_dir / "plugins.toml").write_text(HOST_CONFIG)
        host_env = env_for(host_dir, VALETKEY_CONFIG=str(host_dir / "plugins.toml"))
        machine_env = env_for(machine_dir)

        host = Background(["relay", "host", "--port", "0"], host_env, host_dir)
        procs.append(host)
        host_url = host.wait_for(r"relay host on (http://127\.0\.0\.1:\d+)").group(1)
        import httpx

        for _ in range(200):
            try:
                page = httpx.post(f"{host_url}/connect", data={"label": "bench"}, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        line = re.search(r"<pre id=attach-line>([^<]*)</pre>", page.text)
        assert line is not None, page.text
        base, machine_token = html.unescape(line.group(1)).split()
        relay_id = base.rstrip("/").rsplit("/", 1)[1]
        made = run(["relay", "token", "create", relay_id, "--json"], host_env, host_dir)
        access = json.loads(made)["token"]

        local = Background(["serve", "--port", "0"], machine_env, machine_dir)
        procs.append(local)
        local_url = local.wait_for(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        run(
            ["relay", "attach", "--url", base, "--token-stdin"],
            machine_env,
            machine_dir,
            stdin=machine_token + "\n",
        )
        relay = Background(["relay", "serve"], machine_env, machine_dir)
        procs.append(relay)
        relay.wait_for(r"serving \d+ MCP tools")

        rows = {}
        for name, url, token in (
            ("direct /mcp", f"{local_url}/mcp", None),
            ("relay /relay/<id>/mcp", f"{base}mcp", access),
        ):
            rows[name] = asyncio.run(measure(url, token, args.n, args.concurrency, args.rounds))
        direct, relayed = rows["direct /mcp"], rows["relay /relay/<id>/mcp"]
        print(
            f"tools/call valetkey_status: {args.n} sequential calls, then {args.rounds} rounds "
            f"of {args.concurrency} concurrent calls (mcp Client, streamable HTTP, one session)"
        )
        print("| target | p50 ms | p90 ms | p99 ms | calls/s | concurrent calls completed |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, row in rows.items():
            print(
                f"| {name} | {row['p50']:.2f} | {row['p90']:.2f} | {row['p99']:.2f} | "
                f"{row['calls_per_s']:.0f} | {row['completed']}/"
                f"{row['completed'] + row['failed']} |"
            )
        print(
            f"relay / direct: p50 latency {relayed['p50'] / direct['p50']:.2f}x, "
            f"throughput {relayed['calls_per_s'] / direct['calls_per_s']:.2f}x"
        )
        if relayed["failed"] or direct["failed"]:
            raise SystemExit("some concurrent calls failed")
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
