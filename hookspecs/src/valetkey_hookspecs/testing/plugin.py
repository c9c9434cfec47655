"""PluginContract: generic checks of an installed plugin — its entry point resolves, it registers
on valetkey's plugin manager with no unknown hook, its config schema works with defaults and
hides secrets from repr, and its registry hooks register well-formed things."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
from typing import Any

import pluggy
import pytest

from .. import hookspecs
from ..markers import PROJECT
from ..redaction import SENSITIVE_KEY
from ..types import Connector

_DRIVER_HOOKS = (
    "valetkey_register_stores",
    "valetkey_register_secret_stores",
    "valetkey_register_sealers",
    "valetkey_register_box_runtimes",
    "valetkey_register_notifiers",
    "valetkey_register_credential_providers",
)


class PluginContract:
    """Subclass and override ``plugin_name`` (the entry point name in the group ``valetkey``)."""

    @pytest.fixture
    def plugin_name(self) -> str:
        raise NotImplementedError("override 'plugin_name' to return your entry point's name")

    @pytest.fixture
    def plugin(self, plugin_name: str) -> Any:
        matches = [ep for ep in md.entry_points(group=PROJECT) if ep.name == plugin_name]
        assert matches, (
            f"no entry point {plugin_name!r} in group {PROJECT!r}: is the plugin installed "
            "(pip install -e .) and declared under [project.entry-points.valetkey]?"
        )
        assert len(matches) == 1, f"{len(matches)} installed plugins are named {plugin_name!r}"
        return matches[0].load()

    def test_entry_point_resolves_to_a_documented_module(self, plugin: Any) -> None:
        assert (plugin.__doc__ or "").strip(), "the plugin module needs a docstring"

    def test_registers_with_only_known_hooks(self, plugin: Any, plugin_name: str) -> None:
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(plugin, name=plugin_name)  # validates argument names
        pm.check_pending()  # a misspelled hook name fails here
        assert [c for c in pm.get_hookcallers(plugin) or [] if c.name.startswith("valetkey_")]

    def test_config_schema_works_with_defaults_and_hides_secrets(self, plugin: Any) -> None:
        impl = getattr(plugin, "valetkey_config_schema", None)
        schema = impl() if impl is not None else None
        if schema is None:
            return
        assert isinstance(schema, type), "valetkey_config_schema must return a class"
        instance = schema()  # every key needs a default: a plugin must work unconfigured
        if dataclasses.is_dataclass(schema):
            for f in dataclasses.fields(schema):
                if SENSITIVE_KEY.search(f.name):
                    assert not f.repr, (
                        f"config field {f.name!r} looks secret: use field(repr=False)"
                    )
        assert instance is not None

    def test_registry_hooks_register_well_formed_things(self, plugin: Any) -> None:
        for hook in _DRIVER_HOOKS:
            impl = getattr(plugin, hook, None)
            if impl is None:
                continue
            seen: list[tuple[str, Any]] = []

            def register(
                name: str,
                factory: Any,
                *,
                default: bool = False,
                _seen: list[tuple[str, Any]] = seen,
            ) -> None:
                _seen.append((name, factory))

            _call(impl, register=register, kernel=_BareKernel())
            assert seen, f"{hook} registered nothing"
            for name, factory in seen:
                assert isinstance(name, str), f"{hook}: name {name!r} is not a str"
                assert name, f"{hook}: empty name"
                assert callable(factory), f"{hook}: {name!r} factory is not callable"
        impl = getattr(plugin, "valetkey_register_connectors", None)
        if impl is not None:
            found: list[Any] = []
            _call(impl, register=found.append, kernel=_BareKernel())
            assert found
            assert all(isinstance(c, Connector) for c in found)


def _call(impl: Any, **kwargs: Any) -> Any:
    """Call a hook implementation with the arguments it names (pluggy's rule: it may take fewer
    than the spec)."""
    import inspect

    names = list(inspect.signature(impl).parameters)
    return impl(**{name: kwargs[name] for name in names})


class _BareKernel:
    """The least a registry hook may use of the kernel: no config, a throw-away home, no
    connectors, notifications dropped."""

    def __init__(self) -> None:
        import tempfile
        from pathlib import Path

        from ..registry import ConnectorCatalog

        self.home = Path(tempfile.mkdtemp(prefix="valetkey-kit-"))
        self.connectors = ConnectorCatalog()

    def plugin_config(self, plugin: str) -> Any:
        return None

    async def notify(self, notification: Any) -> None:
        return None

    async def drain_notifications(self, timeout: float = 60.0) -> None:
        return None
