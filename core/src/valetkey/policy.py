"""Deployment policy: which plugins load, which driver is selected, each plugin's raw config.

Read from plugins.toml and the environment:

- ``autoload`` (default true): load every installed plugin unless disabled; false loads only
  ``enable``.
- ``enable`` / ``disable``: plugin names; ``required``: names that must load (else an error);
  ``strict``: any load failure aborts instead of being recorded and skipped.
- ``[select]``: ``store``, ``secret_store``, ``sealer``, ``box_runtime``, ``broker`` → a
  registered name.
- ``[plugin.<name>]``: that plugin's config table.
- ``VALETKEY_PLUGINS`` (comma list) is an allow-list that replaces ``autoload``/``enable``
  (empty string: no plugins at all); ``VALETKEY_DISABLE_PLUGINS`` (comma list) adds to ``disable``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valetkey_hookspecs import ConfigError

SELECTABLE = ("store", "secret_store", "sealer", "box_runtime", "broker")
_TOP_KEYS = {"autoload", "enable", "disable", "required", "strict", "select", "plugin"}


@dataclass(frozen=True)
class Policy:
    """The parsed policy; ``source`` is the file it came from (None: defaults)."""

    source: Path | None = None
    autoload: bool = True
    enable: frozenset[str] = frozenset()
    disable: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    strict: bool = False
    allow_list: frozenset[str] | None = None
    select: Mapping[str, str] = field(default_factory=dict)
    plugin_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        """Should the plugin called ``name`` be loaded?"""
        if name in self.disable:
            return False
        if self.allow_list is not None:
            return name in self.allow_list
        return self.autoload or name in self.enable or name in self.required


def _names(raw: Any, where: str) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(f"{where} must be a list of plugin names")
    return frozenset(raw)


def _env_names(var: str) -> frozenset[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def parse_policy(data: Mapping[str, Any], source: Path | None = None) -> Policy:
    """Validate a plugins.toml document; every error names the file and the key."""
    where = str(source) if source else "plugins.toml"
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(_TOP_KEYS))})"
        )
    for key in ("autoload", "strict"):
        if key in data and not isinstance(data[key], bool):
            raise ConfigError(f"{where}: {key} must be true or false")
    select = data.get("select", {})
    if not isinstance(select, dict):
        raise ConfigError(f"{where}: [select] must be a table")
    for kind, name in select.items():
        if kind not in SELECTABLE:
            raise ConfigError(
                f"{where}: [select] {kind!r} is not a selectable kind ({', '.join(SELECTABLE)})"
            )
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: [select] {kind} must be a driver name")
    plugin_tables = data.get("plugin", {})
    if not isinstance(plugin_tables, dict) or not all(
        isinstance(v, dict) for v in plugin_tables.values()
    ):
        raise ConfigError(f"{where}: [plugin.<name>] entries must be tables")
    disable = _names(data.get("disable", []), f"{where}: disable")
    allow = _env_names("VALETKEY_PLUGINS")
    return Policy(
        source=source,
        autoload=data.get("autoload", True),
        enable=_names(data.get("enable", []), f"{where}: enable"),
        disable=disable | (_env_names("VALETKEY_DISABLE_PLUGINS") or frozenset()),
        required=_names(data.get("required", []), f"{where}: required"),
        strict=data.get("strict", False),
        allow_list=allow,
        select=dict(select),
        plugin_config={name: dict(table) for name, table in plugin_tables.items()},
    )


def load_policy(path: Path | None) -> Policy:
    """Read and parse ``path`` (None: defaults plus the environment)."""
    if path is None:
        return parse_policy({})
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (from VALETKEY_CONFIG?)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_policy(data, path)
