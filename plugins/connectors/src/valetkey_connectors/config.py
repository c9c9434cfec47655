"""The ``[plugin.connectors]`` table of plugins.toml, and where user connector files live.

Light on purpose (standard library only): the plugin's ``__init__`` imports it, and that runs on
every ``valetkey`` command.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from valetkey_hookspecs import ValetkeyError

#: the plugin's entry point name, under which the kernel keeps its configuration
PLUGIN = "connectors"

log = logging.getLogger("valetkey.connectors")


@dataclass(frozen=True)
class ConnectorsConfig:
    """``[plugin.connectors]``: where connectors come from.

    Sources are read in this order, a later definition of a slug replacing an earlier one: the
    built-in catalog, then ``<config dir>/connectors/*.toml``, then each folder of ``dirs``.
    """

    #: load the built-in catalog shipped with the plugin
    builtin: bool = True
    #: more folders of ``*.toml`` connector files; ``~`` is expanded and a relative path is
    #: relative to the valetkey config folder (``$XDG_CONFIG_HOME/valetkey``)
    dirs: tuple[str, ...] = ()


def config_home() -> Path:
    """valetkey's config folder: ``$XDG_CONFIG_HOME/valetkey``, else ``~/.config/valetkey``.

    The same lookup as the kernel's ``valetkey.paths.config_dir`` (a plugin depends on the
    contract only, so it is repeated here).
    """
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "valetkey"


def user_dir() -> Path:
    """The folder of the user's own connector files."""
    return config_home() / "connectors"


def extra_dirs(config: ConnectorsConfig) -> list[Path]:
    """The configured ``dirs``, resolved."""
    found = []
    for entry in config.dirs:
        path = Path(entry).expanduser()
        found.append(path if path.is_absolute() else config_home() / path)
    return found


# --------------------------------------------------------------------------- the kernel's config
#
# Every hook that receives the kernel (connectors, commands, doctor) remembers it here, and the
# catalog is built with that kernel's ``[plugin.connectors]`` table; the module-level loader keeps
# a per-process cache keyed on that configuration.

_kernel: weakref.ref[Any] | None = None
_warned: set[str] = set()


def bind(kernel: Any) -> None:
    """Remember the kernel whose ``[plugin.connectors]`` table is in force (None: forget)."""
    global _kernel
    if kernel is None:
        _kernel = None
        return
    try:
        _kernel = weakref.ref(kernel)
    except TypeError:  # an object that cannot be weakly referenced: keep no reference
        _kernel = None


def current() -> ConnectorsConfig:
    """The configuration in force: the bound kernel's validated table, else the defaults."""
    kernel = _kernel() if _kernel is not None else None
    if kernel is None:
        return ConnectorsConfig()
    try:
        config = kernel.plugin_config(PLUGIN)
    except ValetkeyError as exc:  # an invalid table: 'plugins doctor' reports it too
        if str(exc) not in _warned:
            _warned.add(str(exc))
            log.warning("%s; using the defaults", exc)
        return ConnectorsConfig()
    return config if isinstance(config, ConnectorsConfig) else ConnectorsConfig()
