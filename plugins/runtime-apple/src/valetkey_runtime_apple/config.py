"""The ``[plugin.runtime-apple]`` table of plugins.toml, as the kernel validates it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AppleConfig:
    """Where the CLI is and the runtime's limits."""

    #: the ``container`` CLI: a name looked up on PATH, or a path
    binary: str = "container"
    #: at most this many managed boxes at once (a create past it is a ``Conflict``)
    max_boxes: int = 20
    #: a box's memory and CPUs when its spec names none (the CLI takes whole CPUs: rounded up)
    memory_mib: int = 4096
    cpus: float = 2.0
    #: ``--network`` when the spec names none (None: the engine's default network)
    network: str | None = None
    #: seconds an exec may run when the caller names no timeout (then exit code 124)
    exec_timeout: float = 300.0
    #: seconds any other CLI call (list, inspect, create, logs, delete) may take
    command_timeout: float = 60.0
    #: seconds a box may take to reach ``running`` (the first start of an image unpacks it)
    start_timeout: float = 120.0
    #: seconds between SIGTERM and SIGKILL when a box is destroyed
    stop_timeout: int = 10
