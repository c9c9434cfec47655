"""Fleet (issue 6): the exec round trip of a box on a spoke, routed by the hub, vs a box on the
hub's own runtime, in the same run, through the same MCP endpoint.

Real processes on 127.0.0.1: ``valetkey serve`` as the hub (``[plugin.boxes.hub] enabled``) and
one ``valetkey spoke run`` (its own ``$VALETKEY_HOME``, enrolled with a join token from
``valetkey spoke token create``), both on one private dockerd from tests/fixtures/dockerd.py
(root, docker.io and busybox-static needed). One MCP client session (the official ``mcp``
client) calls ``exec_box(box, "true")`` on the local box and on the spoke's box, alternating, one
sample of each per round. The in-process ``DockerRuntime.exec`` on the same engine is shown as the
floor (no MCP, no HTTP).

Hub-routed path: client → hub ``/mcp`` → box manager → ``RemoteRuntime`` → one ``call`` frame on
the spoke's WebSocket → spoke → its docker runtime → ``result`` frame → back.

    uv run python bench/fleet_exec.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load_dockerd() -> Any:
    spec = importlib.util.spec_from_file_location(
        "valetkey_tests_fixtures_dockerd", REPO / "tests" / "fixtures" / "dockerd.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def line(label: str, samples: list[float]) -> str:
    return (
        f"  {label:<36} p50 {statistics.median(samples) * 1000:6.2f} ms  "
        f"p90 {pct(samples, 0.9):6.2f} ms  p99 {pct(samples, 0.99):6.2f} ms"
    )


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the hub exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    from mcp import Client

    from valetkey_runtime_docker.config import DockerConfig
    from valetkey_runtime_docker.runtime import DockerRuntime

    engine = load_dockerd().start_engine()
    root = Path(tempfile.mkdtemp(prefix="vk-fleet-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    login = "read code; exec sleep 3600"
    (root / "hub.toml").write_text(f"""
[plugin.boxes]
default_image = "{engine.image}"
public_url = "{url}"
exec_before_ready = true  # the bench times exec routing, not the sign-in
[plugin.boxes.login."*"]
command = ["sh", "-c", {json.dumps(login)}]
[plugin.boxes.hub]
enabled = true
[plugin.runtime-docker]
stop_timeout = 1
""")
    (root / "spoke.toml").write_text(f"""
[plugin.boxes.spoke]
images = ["{engine.image}"]
[plugin.runtime-docker]
stop_timeout = 1
""")
    base = {
        **os.environ,
        "DOCKER_HOST": engine.host,
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "XDG_CONFIG_HOME": str(root / "config"),
        "XDG_CACHE_HOME": str(root / "cache"),
    }
    hub_env = {
        **base,
        "VALETKEY_HOME": str(root / "hub"),
        "VALETKEY_CONFIG": str(root / "hub.toml"),
    }
    spoke_env = {
        **base,
        "VALETKEY_HOME": str(root / "spoke"),
        "VALETKEY_CONFIG": str(root / "spoke.toml"),
    }
    vk = [sys.executable, "-m", "valetkey"]
    procs: list[subprocess.Popen[bytes]] = []
    runtime = DockerRuntime(DockerConfig(docker_host=engine.host, stop_timeout=1))
    try:
        hub = subprocess.Popen(
            [*vk, "serve", "--port", str(port)],
            env=hub_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(hub)
        wait_http(f"{url}/healthz", hub)
        made = subprocess.run(
            [*vk, "spoke", "token", "create", "--ttl", "10m", "--json"],
            env=hub_env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = json.loads(made.stdout)["token"]
        spoke = subprocess.Popen(
            [*vk, "spoke", "run", "--hub", url, "--name", "bench", "--token-stdin"],
            env=spoke_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(spoke)
        assert spoke.stdin is not None
        spoke.stdin.write(token.encode() + b"\n")
        spoke.stdin.close()

        async with Client(f"{url}/mcp") as client:

            async def tool(name: str, **kw: Any) -> Any:
                result = await client.call_tool(name, kw)
                assert not result.is_error, result.content
                return result.structured_content

            deadline = time.monotonic() + 30
            while True:
                spokes = {s["name"]: s for s in (await tool("list_spokes"))["result"]}
                if spokes.get("bench", {}).get("connected"):
                    break
                assert time.monotonic() < deadline, "the spoke did not connect"
                await asyncio.sleep(0.2)
            await tool("create_box", box_id="bench-local")
            await tool("create_box", box_id="bench-remote", spoke="bench")
            for box in ("bench-local", "bench-remote"):  # warm up both paths
                for _ in range(5):
                    await tool("exec_box", box_id=box, command="true")
            for _ in range(3):
                await runtime.exec("bench-local", "true")

            local: list[float] = []
            remote: list[float] = []
            floor: list[float] = []
            for _ in range(args.rounds):
                for box, samples in (("bench-local", local), ("bench-remote", remote)):
                    started = time.perf_counter()
                    out = await tool("exec_box", box_id=box, command="true")
                    samples.append(time.perf_counter() - started)
                    assert out["exit_code"] == 0, out
                started = time.perf_counter()
                await runtime.exec("bench-local", "true")
                floor.append(time.perf_counter() - started)
            await tool("destroy_box", box_id="bench-local")
            await tool("destroy_box", box_id="bench-remote")

        version = runtime_version(engine)
        print(f"engine: dockerd {version} at {engine.host}; image {engine.image}")
        print(f"exec_box(box, 'true') over MCP, {args.rounds} rounds, alternating:\n")
        print(line("hub-local box (MCP → local runtime)", local))
        print(line("spoke box (MCP → hub → WS → spoke)", remote))
        print(line("in-process DockerRuntime.exec", floor))
        ratio = statistics.median(remote) / statistics.median(local)
        extra = (statistics.median(remote) - statistics.median(local)) * 1000
        print(f"\n  hub-routed / local: {ratio:.2f}x (p50 +{extra:.2f} ms)")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        await runtime.close()
        engine.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


def runtime_version(engine: Any) -> str:
    client = engine.client()
    try:
        return str(client.version()["Version"])
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
