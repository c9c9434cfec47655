"""valetkey-runtime-docker: the ``docker`` box runtime — boxes as containers of a Docker engine,
driven through the docker SDK.

Only hook implementations live here, and only light imports: the runtime (with the docker SDK)
is imported when the kernel first builds it, so ``valetkey --help`` never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import ConfigError, hookimpl

from .config import DockerConfig

if TYPE_CHECKING:
    from valetkey_hookspecs import BoxRuntime, KernelAPI, PluginContext
    from valetkey_hookspecs.interfaces import RegisterFactory

__all__ = [
    "engine_expected",
    "valetkey_config_schema",
    "valetkey_doctor",
    "valetkey_register_box_runtimes",
]

PLUGIN = "runtime-docker"
#: seconds ``valetkey plugins doctor`` waits for the engine's answer
DOCTOR_TIMEOUT = 2.0
#: where an engine listens when nothing else is configured
DEFAULT_SOCKET = "/var/run/docker.sock"


@hookimpl
def valetkey_config_schema() -> type[Any]:
    """``[plugin.runtime-docker]``: engine address, default limits and network, ``max_boxes``,
    stop and exec timeouts (see ``DockerConfig``)."""
    return DockerConfig


def build_runtime(ctx: PluginContext) -> BoxRuntime:
    """The ``docker`` runtime from ``ctx.config`` (None: defaults); connects on first use."""
    from .runtime import DockerRuntime

    return DockerRuntime(ctx.config if ctx.config is not None else DockerConfig())


@hookimpl
def valetkey_register_box_runtimes(register: RegisterFactory[BoxRuntime]) -> None:
    """Register the ``docker`` box runtime, the default on Linux."""
    register("docker", build_runtime, default=True)


@hookimpl
def valetkey_doctor(kernel: KernelAPI) -> list[str] | None:
    """One line when an engine is expected but does not answer a ping within two seconds.

    An engine is expected when ``[plugin.runtime-docker]`` is configured, ``DOCKER_HOST`` is
    set or the default socket exists. On a machine with no sign of docker at all the plugin
    stays quiet (a default install with no boxes in use is not broken); the first box created
    there fails with the same message.
    """
    try:
        config: DockerConfig | None = kernel.plugin_config(PLUGIN)
    except ConfigError:
        return None  # an invalid table is reported by the config checks already
    config = config or DockerConfig()
    if not engine_expected(config):
        return None
    from .runtime import ping

    problem = ping(config, timeout=DOCTOR_TIMEOUT)
    return [problem] if problem else None


def engine_expected(config: DockerConfig) -> bool:
    """Whether this machine is meant to have a docker engine (see ``valetkey_doctor``)."""
    import os

    return (
        config != DockerConfig()
        or bool(os.environ.get("DOCKER_HOST"))
        or os.path.exists(DEFAULT_SOCKET)
    )
