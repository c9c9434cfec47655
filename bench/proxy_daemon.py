"""Proxy daemon end to end (issue 4): the real ``valetkey proxy daemon`` with the real gate, in
one run, against the same local upstream reached directly:

1. throughput and latency with ``hey`` (keep-alive, a fixed duration): plain HTTP through the
   daemon for a run whose grant is an API-key connection (``valetkey key add openai``), so every
   request is authenticated, checked against the run's policy, **vended from the broker** (store
   read, decrypt, audit append) and injected (``Authorization: Bearer …``) before it goes to the
   upstream — ``[plugin.proxy] upstream_map`` sends ``api.openai.com`` to the local upstream; next
   to the upstream reached directly and to the engine alone (``bench/proxy_throughput.py``'s
   proxy: the same engine with a gate that adds a fixed header and vends nothing);
2. the daemon's resident memory (``VmRSS`` of its process): idle, after the load of part 1,
   after registering 1,000 runs (one grant each) through the management API
   (``DaemonClient.register_run``; how long that took and the size of ``runs.json``), after a
   load pass across 100 of those runs, and after a restart that restores the 1,000 runs.

    uv run python bench/proxy_daemon.py [--seconds 5] [--connections 50] [--runs 1000]
        [--load-runs 100] [--requests-per-run 500] [--latency-seconds 3]

Goals (issue 4): added p50 over direct <= 1 ms for plain HTTP; RSS <= 150 MB with 1,000 runs
registered. Everything runs on 127.0.0.1 in a temp home removed at the end; every process this
starts is stopped (the daemon through ``POST /v1/shutdown``, then SIGTERM/SIGKILL by pid).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from proxy_throughput import Child, Load, run_hey  # noqa: E402

OWNER = "bench"
HOST = "api.openai.com"
KEY = "sk-bench-" + "k" * 40

CONFIG = """\
autoload = true
required = ["store-sqlite", "sealer-local", "secrets-keyring"]
[select]
store = "sqlite"
secret_store = "keyring"
sealer = "local"
[plugin.proxy]
upstream_map = {{ "{host}" = "127.0.0.1:{port}" }}
idle_timeout = 3600
"""


def bench_env(tmp: Path) -> dict[str, str]:
    """A temp home and config; the secret store's encrypted-file fallback (no OS keyring)."""
    env = dict(os.environ)
    env.update(
        VALETKEY_HOME=str(tmp / "home"),
        VALETKEY_CONFIG=str(tmp / "plugins.toml"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_CACHE_HOME=str(tmp / "cache"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        VALETKEY_OWNER=OWNER,
    )
    env.pop("VALETKEY_LOG_LEVEL", None)
    return env


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Daemon:
    """``python -m valetkey proxy daemon`` in the foreground, as a child of this script."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        from valetkey_proxy.paths import ProxyPaths

        self.paths = ProxyPaths.for_home(Path(env["VALETKEY_HOME"]))
        self.out = (tmp / "daemon.out").open("ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "valetkey", "proxy", "daemon"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=self.out,
            start_new_session=True,
        )
        self.client = None
        self.health: dict[str, object] = {}

    def wait_healthy(self, timeout: float = 120.0) -> float:
        """Seconds from spawn until the API answers (runs.json restored by then)."""
        from valetkey_hookspecs import ValetkeyError
        from valetkey_proxy.client import DaemonClient

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}")
            if self.paths.sock.exists():
                client = DaemonClient(self.paths.sock, timeout=30.0)
                try:
                    self.health = client.health()
                except ValetkeyError:
                    client.close()
                else:
                    self.client = client
                    return time.perf_counter() - self.started
            time.sleep(0.02)
        raise RuntimeError("the daemon did not answer")

    def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.shutdown()
            except Exception as exc:  # fall back to signals below
                print(f"  (shutdown through the API failed: {exc}; signalling)")
            self.client.close()
            self.client = None
        for sig, wait in ((None, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            if sig is not None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.out.close()


def request_log(daemon: Daemon, run_id: str) -> tuple[int, int, int]:
    """(entries, status 200, rule inject:openai) in a run's request log."""
    path = daemon.paths.logs / f"{run_id}.jsonl"
    total = ok = injected = 0
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            total += 1
            ok += entry.get("status") == 200
            injected += entry.get("rule") == "inject:openai"
    return total, ok, injected


def row(name: str, res: Load, base: Load | None) -> str:
    extra = ""
    if base is not None:
        extra = f"  {res.p50_ms - base.p50_ms:+7.2f} ms p50  {res.rate / base.rate:5.2f}x rate"
    return (
        f"    {name:<38}{res.p50_ms:>8.2f}{res.p99_ms:>8.2f}{res.rate:>12,.0f}/s"
        f"  ({res.count}, {res.non_200}){extra}"
    )


def bench(args: argparse.Namespace, tmp: Path) -> None:
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed (apt-get install -y hey)")
    throughput = [sys.executable, str(BENCH / "proxy_throughput.py")]
    children: list[Child] = []
    daemon: Daemon | None = None
    rss: list[tuple[str, float]] = []
    try:
        up = Child([*throughput, "--serve-upstream", str(tmp / "up.port")], tmp / "up.port")
        children.append(up)
        up_port = up.wait_port()
        engine = None
        if args.engine:
            engine = Child(
                [*throughput, "--serve-proxy", str(tmp / "engine.port"), str(tmp / "ca"), ""],
                tmp / "engine.port",
            )
            children.append(engine)
        env = bench_env(tmp)
        (tmp / "plugins.toml").write_text(CONFIG.format(host=HOST, port=up_port))
        (tmp / "plugins.toml").chmod(0o600)
        added = subprocess.run(
            [sys.executable, "-m", "valetkey", "key", "add", "openai", "--json"],
            input=KEY + "\n",
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if added.returncode != 0:
            raise RuntimeError(f"valetkey key add failed: {added.stderr}")
        conn_id = json.loads(added.stdout)["id"]

        daemon = Daemon(env, tmp)
        start_s = daemon.wait_healthy()
        client = daemon.client
        assert client is not None
        pid = int(daemon.health["pid"])
        time.sleep(1.0)
        rss.append(("idle, 0 runs (after start)", rss_mb(pid)))

        # ------------------------------------------------------------ 1. throughput
        reg = client.register_run({"owner": OWNER, "grants": ["openai"], "run_id": "bench-load"})
        proxy = f"http://valetkey:{reg['auth_token']}@127.0.0.1:{reg['proxy_port']}"
        bare = client.register_run({"owner": OWNER, "grants": [], "run_id": "bench-nogrant"})
        bare_proxy = f"http://valetkey:{bare['auth_token']}@127.0.0.1:{bare['proxy_port']}"
        engine_proxy = ""
        if engine is not None:
            engine_proxy = f"http://valetkey:{'b' * 64}@127.0.0.1:{engine.wait_port()}"
        via_daemon = f"http://{HOST}/v1/models"
        direct = f"http://127.0.0.1:{up_port}/v1/models"
        routes = [("direct (baseline)", direct, None)]
        if engine:
            routes.append(("engine only (proxy_throughput's gate)", direct, engine_proxy))
        routes.append(("daemon: real gate, run without grant", via_daemon, bare_proxy))
        routes.append(("daemon: real gate, vend + inject", via_daemon, proxy))
        warm = {name: run_hey(url, 1, args.connections, px) for name, url, px in routes}
        results: dict[str, dict[str, Load]] = {}
        plan = [(f"hey -z {args.seconds:g}s -c {args.connections}", args.seconds, args.connections)]
        if args.latency_seconds > 0:
            plan.append((f"hey -z {args.latency_seconds:g}s -c 1", args.latency_seconds, 1))
        for label, seconds, conc in plan:
            results[label] = {name: run_hey(url, seconds, conc, px) for name, url, px in routes}
        time.sleep(0.5)  # the request log's writer flushes every 0.2 s
        logged, logged_ok, logged_injected = request_log(daemon, "bench-load")
        sent = sum(r["daemon: real gate, vend + inject"].count for r in [*results.values(), warm])
        rss.append(("after the load of part 1 (1 run)", rss_mb(pid)))

        # ------------------------------------------------------------ 2. 1,000 runs
        tokens: list[str] = []
        t0 = time.perf_counter()
        for i in range(args.runs):
            made = client.register_run(
                {"owner": OWNER, "grants": ["openai"], "run_id": f"bench-{i:05d}"}
            )
            tokens.append(made["auth_token"])
        reg_s = time.perf_counter() - t0
        time.sleep(1.0)  # runs.json is written after the debounce
        runs_json = daemon.paths.runs
        runs_bytes = runs_json.stat().st_size
        runs_mode = runs_json.stat().st_mode & 0o777
        runs_text = runs_json.read_text()
        leaked = KEY in runs_text
        persisted = len(json.loads(runs_text)["runs"])
        health = client.health()
        rss.append((f"{health['run_count']} runs registered", rss_mb(pid)))

        load_runs = tokens[: args.load_runs]
        t0 = time.perf_counter()
        spread = Load(0, 0, 0, 0, 0)
        p50s: list[float] = []
        for token in load_runs:
            px = f"http://valetkey:{token}@127.0.0.1:{reg['proxy_port']}"
            cmd = ["hey", "-n", str(args.requests_per_run), "-c", "10", "-cpus", "1", "-x", px]
            out = subprocess.run([*cmd, via_daemon], capture_output=True, text=True, check=True)
            res = parse_hey(out.stdout)
            spread.count += res.count
            spread.non_200 += res.non_200
            p50s.append(res.p50_ms)
        spread_s = time.perf_counter() - t0
        spread.rate = spread.count / spread_s
        p50s.sort()
        spread.p50_ms = p50s[len(p50s) // 2]
        time.sleep(0.5)
        rss.append(
            (
                f"after {len(load_runs)} of them made {args.requests_per_run} requests each",
                rss_mb(pid),
            ),
        )
        log_files = len(list(daemon.paths.logs.glob("*.jsonl")))
        db = Path(env["VALETKEY_HOME"]) / "valetkey.db"
        db_mb = db.stat().st_size / 1e6 if db.exists() else float("nan")

        # ------------------------------------------------------------ restart, restore
        daemon.stop()
        daemon = Daemon(env, tmp)
        restore_s = daemon.wait_healthy()
        pid2 = int(daemon.health["pid"])
        restored = int(daemon.health["run_count"])
        failures = len(daemon.health.get("restore_failures") or [])  # type: ignore[arg-type]
        time.sleep(1.0)
        rss.append((f"restarted: {restored} runs restored from runs.json", rss_mb(pid2)))
        ok_after = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-x",
                f"http://valetkey:{tokens[-1]}@127.0.0.1:{daemon.health['proxy_port']}",
                via_daemon,
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    finally:
        if daemon is not None:
            daemon.stop()
        for child in children:
            child.stop()

    # ---------------------------------------------------------------- report
    hey_version = "hey 0.1.4 (Debian)"
    print(
        f"\nProxy daemon end to end: the real gate, an API-key grant (openai, {conn_id}) vended "
        f"per request; upstream: uvloop, 13-byte body; {hey_version}, -cpus 1, keep-alive"
    )
    print(f"  daemon up (API answering) {start_s * 1000:.0f} ms after spawn")
    print(f"  {'':<40}{'p50 ms':>8}{'p99 ms':>8}{'requests/s':>14}  (responses, non-200)")
    for label, rows in results.items():
        print(f"  {label}:")
        base = rows["direct (baseline)"]
        for name, res in rows.items():
            print(row(name, res, None if res is base else base))
        if label.endswith("-c 1"):  # hey's latencies come in 0.1 ms steps: the mean from the rate
            means = ", ".join(
                f"{n.split(':')[-1].strip()} {1e6 / r.rate:.0f} µs" for n, r in rows.items()
            )
            print(f"    mean latency (1 / rate): {means}")
        ours = rows["daemon: real gate, vend + inject"]
        added_p50 = ours.p50_ms - base.p50_ms
        print(
            f"    added p50 over direct: {added_p50:+.2f} ms "
            f"(goal <= 1 ms: {'MET' if added_p50 <= 1.0 else 'MISSED'})"
        )
        if "engine only (proxy_throughput's gate)" in rows:
            eng = rows["engine only (proxy_throughput's gate)"]
            print(
                f"    daemon / engine only: {ours.rate / eng.rate:.2f}x requests/s, "
                f"p50 {ours.p50_ms - eng.p50_ms:+.2f} ms"
            )
    print(
        f"  request log of the load run: {logged} entries for {sent} responses, warm-up included "
        f"({logged_ok} status 200, {logged_injected} rule inject:openai)"
    )
    print(
        f"\n  {args.runs} registrations through DaemonClient.register_run (sequential): "
        f"{reg_s:.2f} s, {reg_s / args.runs * 1000:.2f} ms each"
    )
    print(
        f"  runs.json: {persisted} runs, {runs_bytes:,} bytes ({runs_bytes / persisted:.0f} per "
        f"run), mode {runs_mode:o}, API key in it: {'YES' if leaked else 'no'}"
    )
    print(
        f"  load across {len(load_runs)} runs (hey -n {args.requests_per_run} -c 10 each, one "
        f"after another): {spread.count:,} responses ({spread.non_200} non-200) in "
        f"{spread_s:.1f} s = {spread.rate:,.0f}/s incl. hey start-up; median of per-run p50s "
        f"{spread.p50_ms:.2f} ms; {log_files} request-log files"
    )
    print(f"  database after all this: {db_mb:.1f} MB (grants audited once each)")
    print(
        f"  restart with {persisted} runs in runs.json: API answering {restore_s:.2f} s after "
        f"spawn, {restored} restored, {failures} failed; a restored token's request: {ok_after}"
    )
    print("\n  daemon RSS (VmRSS):")
    for name, mb in rss:
        print(f"    {name:<60}{mb:>8.1f} MB")
    at_1000 = max(mb for name, mb in rss[2:])
    print(
        f"  goal RSS <= 150 MB with {args.runs} runs registered: "
        f"{'MET' if at_1000 <= 150 else 'MISSED'} (max {at_1000:.1f} MB)"
    )


def parse_hey(out: str) -> Load:
    import re

    def num(pattern: str) -> float:
        found = re.search(pattern, out)
        if found is None:
            raise RuntimeError(f"unexpected hey output (no {pattern!r}):\n{out}")
        return float(found.group(1))

    codes = {int(c): int(k) for c, k in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+Get ", out))
    return Load(
        rate=num(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=num(r"50% in ([\d.]+) secs") * 1000,
        p99_ms=num(r"99% in ([\d.]+) secs") * 1000,
        count=sum(codes.values()),
        non_200=sum(v for c, v in codes.items() if c != 200) + errors,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--latency-seconds", type=float, default=3.0, help="one-connection runs; 0: skip"
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--load-runs", type=int, default=100)
    parser.add_argument("--requests-per-run", type=int, default=500)
    parser.add_argument(
        "--no-engine",
        dest="engine",
        action="store_false",
        help="skip the engine-only line (proxy_throughput.py's proxy)",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="valetkey-bench-daemon-"))
    try:
        bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
