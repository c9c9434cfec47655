"""Box runtime (docker, issue 5): the ``docker`` box runtime vs the raw docker SDK doing the same
work against the same engine in the same run.

1. create-to-running: ``runtime.create(spec)`` (checks, duplicate and max_boxes look-up, create,
   start, inspect) vs ``client.containers.run(..., detach=True)`` with the same image, command,
   name, hostname, labels, limits, network and init;
2. exec round trip: ``runtime.exec(box, "true")`` (find by name and labels, exec create, start,
   read, exit code) vs ``client.containers.get(name).exec_run(["sh", "-c", "true"])``; the raw
   call on a Container object already in hand is shown too (the strictest baseline);
3. destroy: ``runtime.destroy(box)`` vs ``containers.get(name)`` + ``stop`` + ``remove``;
4. list with 100 boxes: ``runtime.list()`` vs the low-level ``api.containers(all=True,
   filters=label)`` (the high-level ``containers.list`` inspects every container, shown too).

Runtime and raw samples alternate, one of each per round, so drift hits both alike. The engine
is a private dockerd started from ``tests/fixtures/dockerd.py`` (root, docker.io and
busybox-static needed), or ``--docker-host URL`` to use a running one (the bench's boxes and
containers are removed at the end).

    uv run python bench/box_runtime.py [--rounds 20] [--boxes 100] [--docker-host URL]

Goal (issue 5): create-to-running and exec round trip <= 1.2x the raw SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from valetkey_hookspecs import BoxSpec
from valetkey_runtime_docker.config import DockerConfig
from valetkey_runtime_docker.runtime import DockerRuntime

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["sh", "-c", "cat; sleep 600"]
MEMORY_MIB, CPUS, PIDS = 256, 0.5, 128


def load_dockerd() -> Any:
    spec = importlib.util.spec_from_file_location(
        "valetkey_tests_fixtures_dockerd", REPO / "tests" / "fixtures" / "dockerd.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"p50 {statistics.median(samples) * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"


def row(label: str, ours: list[float], base: list[float], base_label: str) -> str:
    ratio = statistics.median(ours) / statistics.median(base)
    return (
        f"  {label:<22} runtime {ms(ours)}\n"
        f"  {'':<22} {base_label:<7} {ms(base)}\n"
        f"  {'':<22} ratio   {ratio:.2f}x"
    )


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


def timed_sync(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--docker-host", default="")
    args = parser.parse_args()

    engine = None
    if args.docker_host:
        host, image = args.docker_host, "busybox:latest"
    else:
        dockerd = load_dockerd()
        engine = dockerd.start_engine()
        host, image = engine.host, engine.image
    import docker

    client = docker.DockerClient(base_url=host, version="auto", timeout=60)
    api = client.api
    runtime = DockerRuntime(
        DockerConfig(docker_host=host, max_boxes=0, stop_timeout=10, network="none")
    )
    tag = secrets.token_hex(3)
    try:
        print(f"engine: dockerd {client.version()['Version']} (API {api.api_version}) at {host}")
        print(f"image: {image}; box: {' '.join(COMMAND)}; {args.rounds} rounds\n")
        await runtime.list()  # connect (version probe) outside the timings
        client.ping()

        def spec(box_id: str) -> BoxSpec:
            return BoxSpec(
                box_id=box_id,
                image=image,
                command=tuple(COMMAND),
                memory_mib=MEMORY_MIB,
                cpus=CPUS,
                pids=PIDS,
                network="none",
            )

        def raw_run(name: str) -> Any:
            return client.containers.run(
                image,
                COMMAND,
                detach=True,
                name=name,
                hostname=name,
                labels={"valetkey.bench": "raw", "valetkey.box-id": name},
                mem_limit=f"{MEMORY_MIB}m",
                nano_cpus=int(CPUS * 1e9),
                pids_limit=PIDS,
                network_mode="none",
                init=True,
                stdin_open=True,
            )

        create_rt: list[float] = []
        create_raw: list[float] = []
        exec_rt: list[float] = []
        exec_raw: list[float] = []
        exec_held: list[float] = []
        destroy_rt: list[float] = []
        destroy_raw: list[float] = []
        for i in range(args.rounds):
            ours, theirs = f"bench-rt-{tag}-{i}", f"bench-raw-{tag}-{i}"
            create_rt.append(await timed(partial(runtime.create, spec(ours))))
            create_raw.append(timed_sync(partial(raw_run, theirs)))
            held = client.containers.get(theirs)
            for _ in range(3):
                exec_rt.append(await timed(partial(runtime.exec, ours, "true")))

                def raw_exec(theirs: str = theirs) -> Any:
                    return client.containers.get(theirs).exec_run(["sh", "-c", "true"])

                exec_raw.append(timed_sync(raw_exec))
                exec_held.append(timed_sync(partial(held.exec_run, ["sh", "-c", "true"])))
            destroy_rt.append(await timed(partial(runtime.destroy, ours)))

            def raw_destroy(theirs: str = theirs) -> None:
                c = client.containers.get(theirs)
                c.stop(timeout=10)
                c.remove(force=True)

            destroy_raw.append(timed_sync(raw_destroy))

        print("Per box, runtime vs the raw docker SDK (same engine, alternating):")
        print(row("create-to-running", create_rt, create_raw, "raw"))
        print(row("exec round trip", exec_rt, exec_raw, "raw"))
        ratio_held = statistics.median(exec_rt) / statistics.median(exec_held)
        print(
            f"  {'':<22} held    {ms(exec_held)}  (raw on a Container in hand: {ratio_held:.2f}x)"
        )
        print(row("destroy", destroy_rt, destroy_raw, "raw"))

        # ---- list with N boxes
        ids = [f"bench-list-{tag}-{i}" for i in range(args.boxes)]
        sem = asyncio.Semaphore(8)

        async def make(box_id: str) -> None:
            async with sem:
                await runtime.create(spec(box_id))

        started = time.perf_counter()
        await asyncio.gather(*(make(b) for b in ids))
        fill = time.perf_counter() - started
        flt = {"label": "valetkey.managed=1"}
        list_rt: list[float] = []
        list_raw: list[float] = []
        list_high: list[float] = []
        for _ in range(args.rounds):
            list_rt.append(await timed(runtime.list))
            list_raw.append(timed_sync(lambda: api.containers(all=True, filters=flt)))
        for _ in range(3):
            list_high.append(timed_sync(lambda: client.containers.list(all=True, filters=flt)))
        boxes = await runtime.list()
        assert len(boxes) == args.boxes, len(boxes)
        print(f"\nList with {args.boxes} boxes (made 8 at a time in {fill:.1f} s):")
        print(row(f"list {args.boxes} boxes", list_rt, list_raw, "raw"))
        print(f"  {'':<22} high    {ms(list_high)}  (containers.list inspects each one)")

        async def drop(box_id: str) -> None:
            async with sem:
                await runtime.destroy(box_id)

        started = time.perf_counter()
        await asyncio.gather(*(drop(b) for b in ids))
        print(
            f"  destroyed {args.boxes} boxes 8 at a time in {time.perf_counter() - started:.1f} s"
        )
        goal = max(
            statistics.median(create_rt) / statistics.median(create_raw),
            statistics.median(exec_rt) / statistics.median(exec_raw),
        )
        print(f"\ngoal <= 1.2x (create-to-running, exec): {'met' if goal <= 1.2 else 'NOT met'}")
    finally:
        await runtime.close()
        for c in api.containers(all=True, filters={"name": "bench-"}):
            if tag in " ".join(c["Names"]):
                api.remove_container(c["Id"], force=True)
        client.close()
        if engine is not None:
            engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
