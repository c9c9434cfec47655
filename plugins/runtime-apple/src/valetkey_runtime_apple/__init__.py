"""valetkey-runtime-apple: the box runtime ``apple``, over Apple's ``container`` CLI (macOS).

UNTESTED ON A REAL ENGINE: the CLI runs on macOS only; this plugin was built from its
documentation and source (https://github.com/apple/container, docs/command-reference.md and
Sources/ContainerCommands; see ``commands`` for the exact files) and is tested against recorded
output shapes and a fake ``container`` program on Linux.

Only the hook implementations live here; the runtime is imported when the kernel builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import hookimpl
from valetkey_hookspecs.errors import ConfigError

from .config import AppleConfig

if TYPE_CHECKING:
    from valetkey_hookspecs import KernelAPI, PluginContext
    from valetkey_hookspecs.interfaces import BoxRuntime, RegisterFactory

__all__ = [
    "VALETKEY_NOTES",
    "valetkey_config_schema",
    "valetkey_doctor",
    "valetkey_register_box_runtimes",
]

PLUGIN = "runtime-apple"

#: shown by ``valetkey plugins list``
VALETKEY_NOTES = (
    "untested on a real engine: built from Apple's container CLI docs and source, tested "
    "against recorded outputs and a fake CLI on Linux"
)


@hookimpl
def valetkey_config_schema() -> type[Any]:
    """``[plugin.runtime-apple]``: see :class:`AppleConfig`."""
    return AppleConfig


@hookimpl
def valetkey_register_box_runtimes(register: RegisterFactory[BoxRuntime]) -> None:
    """Register the ``apple`` box runtime (never the default: select it explicitly)."""
    register("apple", build_runtime)


def build_runtime(ctx: PluginContext) -> BoxRuntime:
    """The runtime from ``ctx.config``; the engine itself is checked on first use."""
    config: AppleConfig = ctx.config if ctx.config is not None else AppleConfig()
    if config.max_boxes < 1:
        raise ConfigError(f"[plugin.{ctx.plugin}] max_boxes must be >= 1 (got {config.max_boxes})")
    if config.memory_mib < 1 or config.cpus <= 0:
        raise ConfigError(f"[plugin.{ctx.plugin}] memory_mib and cpus must be positive")
    if min(config.command_timeout, config.start_timeout, config.exec_timeout) <= 0 or (
        config.stop_timeout < 0
    ):
        raise ConfigError(f"[plugin.{ctx.plugin}] timeouts must be positive")
    from .runtime import AppleRuntime

    return AppleRuntime(
        binary=config.binary,
        max_boxes=config.max_boxes,
        memory_mib=config.memory_mib,
        cpus=config.cpus,
        network=config.network,
        exec_timeout=config.exec_timeout,
        command_timeout=config.command_timeout,
        start_timeout=config.start_timeout,
        stop_timeout=config.stop_timeout,
    )


@hookimpl
def valetkey_doctor(kernel: KernelAPI) -> list[str] | None:
    """When ``apple`` is the selected box runtime: is this macOS, is the CLI on PATH."""
    selected = getattr(kernel, "selected", None)
    try:
        driver = selected("box_runtime") if callable(selected) else None
    except Exception:  # no or ambiguous selection: the kernel's own checks report it
        return None
    if driver is None or getattr(driver, "name", None) != "apple":
        return None
    try:
        config: AppleConfig | None = kernel.plugin_config(PLUGIN)
    except ConfigError:
        return None
    from .runtime import engine_problem

    problem = engine_problem((config or AppleConfig()).binary)
    return [problem] if problem else None
