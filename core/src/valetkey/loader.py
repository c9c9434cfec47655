"""Plugin discovery and registration: stevedore finds, pluggy calls.

stevedore lists the entry points of the group ``valetkey`` (cached) and imports the ones the
policy wants, with a load-failure callback so a broken plugin is recorded and skipped, never a
crash of the host. Each loaded module is registered on a ``pluggy.PluginManager`` and
``check_pending()`` turns a misspelled hookimpl into an error that names the plugin; such a plugin
is unregistered. With ``strict = true`` any failure aborts.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from typing import Any

import pluggy

from valetkey_hookspecs import PROJECT, PluginError
from valetkey_hookspecs import hookspecs as _hookspecs

from .policy import Policy

NAMESPACE = PROJECT

#: registry hook name → the kind of thing it provides (shown by ``plugins list``)
KIND_OF_HOOK = {
    "valetkey_register_connectors": "connectors",
    "valetkey_register_credential_providers": "credential_providers",
    "valetkey_register_stores": "store",
    "valetkey_register_secret_stores": "secret_store",
    "valetkey_register_sealers": "sealer",
    "valetkey_register_box_runtimes": "box_runtime",
    "valetkey_register_notifiers": "notifier",
    "valetkey_register_brokers": "broker",
    "valetkey_register_response_transformers": "response_transformer",
    "valetkey_register_box_hooks": "box_hook",
    "valetkey_register_commands": "commands",
    "valetkey_register_routes": "routes",
    "valetkey_register_mcp_tools": "mcp_tools",
    "valetkey_register_services": "services",
}


@dataclass
class PluginRecord:
    """One installed plugin as the loader saw it."""

    name: str
    target: str
    wanted: bool = True
    loaded: bool = False
    error: str | None = None
    kinds: tuple[str, ...] = ()
    description: str = ""
    obj: Any = field(default=None, repr=False)


@dataclass
class LoadResult:
    """The plugin manager, every installed plugin's record, and problems found on the way."""

    pm: pluggy.PluginManager
    plugins: dict[str, PluginRecord]
    problems: list[str]
    seconds: float
    missing_required: list[str] = field(default_factory=list)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with valetkey's hookspecs and nothing registered."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(_hookspecs)
    return pm


def _hook_names() -> list[str]:
    return [n for n in dir(_hookspecs) if n.startswith("valetkey_")]


def _unknown_hook(pm: pluggy.PluginManager, plugin: object) -> str | None:
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            close = difflib.get_close_matches(caller.name, _hook_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown hook {caller.name!r}{hint}"
    return None


def load_plugins(policy: Policy, extra: dict[str, object] | None = None) -> LoadResult:
    """Discover, import and register plugins as ``policy`` says.

    :param extra: plugin objects to register as if installed (tests, in-process plugins).
    """
    from stevedore import NamedExtensionManager

    started = time.perf_counter()
    pm = new_plugin_manager()
    problems: list[str] = []
    lister: NamedExtensionManager[Any] = NamedExtensionManager(
        NAMESPACE, names=[], on_missing_entrypoints_callback=lambda names: None
    )
    records: dict[str, PluginRecord] = {}
    for ep in lister.list_entry_points():
        if ep.name == "valetkey":
            problems.append(f"plugin name 'valetkey' is reserved; ignoring {ep.value}")
            continue
        if ep.name in records:
            records[ep.name].error = f"two installed plugins are named {ep.name!r}"
            continue
        records[ep.name] = PluginRecord(name=ep.name, target=ep.value, wanted=policy.wants(ep.name))
    wanted = [name for name, rec in records.items() if rec.wanted and rec.error is None]

    def on_failure(_manager: Any, entrypoint: Any, exc: BaseException) -> None:
        records[entrypoint.name].error = f"import failed: {_describe(exc)}"

    manager: NamedExtensionManager[Any] = NamedExtensionManager(
        NAMESPACE,
        names=wanted,
        name_order=True,
        on_load_failure_callback=on_failure,
        on_missing_entrypoints_callback=lambda names: None,
    )
    loaded: list[tuple[str, object]] = [(ext.name, ext.plugin) for ext in manager]
    for name, obj in (extra or {}).items():
        records[name] = PluginRecord(name=name, target=f"<in-process {type(obj).__name__}>")
        if policy.wants(name):
            loaded.append((name, obj))
        else:
            records[name].wanted = False

    from . import builtin

    records[builtin.NAME] = PluginRecord(name=builtin.NAME, target="valetkey.builtin")
    loaded.insert(0, (builtin.NAME, builtin))  # essential: the policy cannot disable it
    for name, obj in loaded:
        record = records[name]
        record.description = _first_line(getattr(obj, "__doc__", None))
        try:
            pm.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            record.error = f"invalid hookimpl: {exc}"
            continue
        except ValueError:  # the same module under two entry-point names
            other = pm.get_name(obj)
            record.error = f"the same module is already registered as plugin {other!r}"
            continue
        unknown = _unknown_hook(pm, obj)
        if unknown:
            pm.unregister(obj)
            record.error = unknown
            continue
        record.loaded = True
        record.obj = obj
        record.kinds = tuple(
            sorted(
                KIND_OF_HOOK[c.name]
                for c in pm.get_hookcallers(obj) or []
                if c.name in KIND_OF_HOOK
            )
        )
    pm.check_pending()  # everything left is verified; this is a safety net

    missing_required: list[str] = []
    for name in sorted(policy.required):
        required = records.get(name)
        if required is None:
            missing_required.append(f"required plugin {name!r} is not installed")
        elif not required.loaded:
            why = required.error or "disabled by policy"
            missing_required.append(f"required plugin {name!r} did not load: {why}")
    problems.extend(missing_required)
    for record in records.values():
        if record.error:
            problems.append(f"plugin {record.name!r}: {record.error}")
    if policy.strict and problems:
        raise PluginError(f"strict plugin loading: {problems[0]}")
    return LoadResult(pm, records, problems, time.perf_counter() - started, missing_required)
