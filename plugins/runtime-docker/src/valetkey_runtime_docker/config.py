"""The ``[plugin.runtime-docker]`` table of plugins.toml, as the kernel validates it."""

from __future__ import annotations

from dataclasses import dataclass, field

from valetkey_hookspecs import ConfigError

WHERE = "[plugin.runtime-docker]"
#: accepted values of ``pull``
PULL_POLICIES = ("missing", "never")


@dataclass(frozen=True)
class DockerConfig:
    """How the docker box runtime reaches its engine and what every box gets by default."""

    #: the engine's address (``unix:///var/run/docker.sock``, ``tcp://host:2376``, ``ssh://…``);
    #: empty: ``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH``), else the
    #: default socket
    docker_host: str = ""
    #: Engine API version to speak (``auto``: ask the engine once)
    api_version: str = "auto"
    #: network mode of a box whose spec names none: ``none`` (no network), ``host``, ``bridge``
    #: or a network's name
    network: str = "none"
    #: memory limit of a box whose spec names none (MiB)
    memory_mib: int = 4096
    #: CPU limit of a box whose spec names none
    cpus: float = 2.0
    #: process limit of a box whose spec names none
    pids: int = 4096
    #: seconds between SIGTERM and SIGKILL when a box is destroyed
    stop_timeout: int = 10
    #: most boxes at once (0: no limit); creating one more is refused before a container exists
    max_boxes: int = 50
    #: seconds an exec may run when the caller names no timeout
    exec_timeout: float = 600.0
    #: seconds to wait for an answer from the engine
    api_timeout: float = 60.0
    #: run a tiny init (docker-init) as PID 1: signals reach the main process, zombies are reaped
    init: bool = True
    #: ``missing``: pull an image the engine does not have; ``never``: fail instead
    pull: str = "missing"
    #: Linux capabilities a box keeps (every other one is dropped: no raw sockets, no mounts,
    #: no ptrace of the host's processes); enough to install packages and run services as root
    cap_add: list[str] = field(
        default_factory=lambda: ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL"]
    )
    #: processes in a box cannot gain privileges (setuid binaries) beyond their parent's
    no_new_privileges: bool = True
    #: the engine keeps at most this much console output per box (a box cannot fill the disk)
    log_max_size: str = "10m"

    def __post_init__(self) -> None:
        positive = ("memory_mib", "cpus", "pids", "exec_timeout", "api_timeout")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{WHERE} {name}: must be positive (got {getattr(self, name)})")
        for name in ("stop_timeout", "max_boxes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{WHERE} {name}: must be >= 0 (got {getattr(self, name)})")
        if not self.network.strip():
            raise ConfigError(f"{WHERE} network: must not be empty (use 'none' for no network)")
        if self.pull not in PULL_POLICIES:
            raise ConfigError(
                f"{WHERE} pull: must be one of {', '.join(PULL_POLICIES)} (got {self.pull!r})"
            )
        if self.api_version != "auto" and not _is_version(self.api_version):
            raise ConfigError(
                f"{WHERE} api_version: 'auto' or a version like '1.41' (got {self.api_version!r})"
            )


def _is_version(text: str) -> bool:
    major, _, minor = text.partition(".")
    return major.isdigit() and minor.isdigit()
