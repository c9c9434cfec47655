"""notify-log: the default notifier — every notification becomes one log line (logger
``valetkey.notify``), at WARNING for events that need a person (re-auth), INFO otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from valetkey_hookspecs import ConfigError, PluginContext, hookimpl
from valetkey_hookspecs.interfaces import RegisterFactory

from .notifier import LogNotifier


@dataclass(frozen=True)
class Config:
    """``[plugin.notify-log]``."""

    #: logging level for events that need a person
    level: str = "WARNING"

    def __post_init__(self) -> None:
        if not isinstance(logging.getLevelName(self.level.upper()), int):
            raise ConfigError(f"[plugin.notify-log] level: unknown logging level {self.level!r}")


@hookimpl
def valetkey_config_schema() -> type[Config]:
    return Config


@hookimpl
def valetkey_register_notifiers(register: RegisterFactory[LogNotifier]) -> None:
    register("log", _factory, default=True)


def _factory(ctx: PluginContext) -> LogNotifier:
    config: Config = ctx.config or Config()
    return LogNotifier(level=config.level)
