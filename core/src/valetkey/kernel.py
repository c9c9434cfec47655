"""The kernel: a typed facade over the plugin manager.

Code calls ``kernel.store``, ``kernel.sealer``, ``kernel.connectors.get(slug)``,
``kernel.runtime("docker")``, ``await kernel.notify(event)`` — never ``pm.hook.*``. The kernel
calls each plugin's registry hook itself, one plugin at a time in name order, so it knows who
registered what, can hand each plugin its own config, and owns naming, duplicates and selection.

A kernel is built by :func:`load`; nothing happens at import. ``async with kernel:`` opens the
store (applying migrations) and closes what was opened.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import pluggy

from valetkey_hookspecs import (
    BoxHook,
    BoxRuntime,
    ConfigError,
    Connector,
    ConnectorCatalog,
    CredentialBroker,
    CredentialProvider,
    NotFound,
    Notification,
    Notifier,
    PluginContext,
    PluginError,
    ResponseTransformer,
    Sealer,
    SecretStore,
    Store,
)
from valetkey_hookspecs.files import private_dir
from valetkey_hookspecs.redaction import redact_text

from . import config as _config
from .loader import LoadResult, PluginRecord, load_plugins
from .paths import default_home, find_config
from .policy import Policy, load_policy

log = logging.getLogger("valetkey.kernel")

#: kind → the registry hook that provides it
DRIVER_HOOKS = {
    "store": "valetkey_register_stores",
    "secret_store": "valetkey_register_secret_stores",
    "sealer": "valetkey_register_sealers",
    "box_runtime": "valetkey_register_box_runtimes",
    "notifier": "valetkey_register_notifiers",
    "credential_provider": "valetkey_register_credential_providers",
    "broker": "valetkey_register_brokers",
    "response_transformer": "valetkey_register_response_transformers",
    "box_hook": "valetkey_register_box_hooks",
}


@dataclass(frozen=True)
class Driver:
    """A factory registered by a plugin under a name."""

    kind: str
    name: str
    plugin: str
    factory: Callable[[PluginContext], Any]
    default: bool = False


@dataclass(frozen=True)
class McpTool:
    """An MCP tool registered by a plugin."""

    fn: Callable[..., Awaitable[Any]]
    name: str
    description: str | None
    plugin: str


@dataclass(frozen=True)
class Service:
    """A background service registered by a plugin."""

    name: str
    fn: Callable[[], Awaitable[None]]
    plugin: str


@dataclass(frozen=True)
class Route:
    """An ASGI app mounted under a path prefix by a plugin."""

    prefix: str
    app: Any
    plugin: str


RESERVED_PREFIXES = ("/healthz", "/mcp")


class Kernel:
    """The loaded plugins, the policy, and typed access to what they provide."""

    def __init__(self, policy: Policy, loaded: LoadResult, home: Path) -> None:
        self.policy = policy
        self.pm: pluggy.PluginManager = loaded.pm
        self._records = loaded.plugins
        self._problems = list(loaded.problems)
        self.load_seconds = loaded.seconds
        self._home = home
        self._configs: dict[str, Any] = {}
        self._instances: dict[tuple[str, str], Any] = {}
        self._opened: Store | None = None
        self._selected: dict[str, Driver] = {}
        self._pending: set[Any] = set()  # asyncio tasks (asyncio is imported when first used)

    # ------------------------------------------------------------------ plugins and policy

    @property
    def plugins(self) -> list[PluginRecord]:
        """Every installed plugin, loaded or not, by name."""
        return sorted(self._records.values(), key=lambda r: r.name)

    @property
    def problems(self) -> list[str]:
        """Load and registration problems found so far (``plugins doctor`` adds more checks)."""
        return list(self._problems)

    @cached_property
    def home(self) -> Path:
        """The state folder, created 0700 on first use."""
        return private_dir(self._home)

    @property
    def home_path(self) -> Path:
        """The state folder's path, without creating it."""
        return self._home

    def _schema(self, plugin: str) -> type[Any] | None:
        record = self._records.get(plugin)
        if record is None or not record.loaded:
            return None
        impl = getattr(record.obj, "valetkey_config_schema", None)
        if impl is None:
            return None
        schema: type[Any] | None = impl()
        return schema

    def plugin_config(self, plugin: str) -> Any:
        """The plugin's validated config object (None when it declares no schema)."""
        if plugin not in self._configs:
            table = self.policy.plugin_config.get(plugin)
            base = self.policy.source.parent if self.policy.source else None
            self._configs[plugin] = _config.validate(plugin, self._schema(plugin), table, base=base)
        return self._configs[plugin]

    def config_problems(self) -> list[str]:
        """Every invalid ``[plugin.<name>]`` table, and tables for plugins that are not loaded."""
        problems: list[str] = []
        for name in sorted(self.policy.plugin_config):
            record = self._records.get(name)
            if record is None:
                problems.append(f"[plugin.{name}]: no plugin named {name!r} is installed")
                continue
            if not record.loaded:
                continue
            try:
                self.plugin_config(name)
            except ConfigError as exc:
                problems.append(str(exc))
        for record in self.plugins:
            if record.loaded and record.name not in self.policy.plugin_config:
                try:
                    self.plugin_config(record.name)
                except ConfigError as exc:
                    problems.append(str(exc))
        return problems

    def _impls(self, hook: str) -> list[Any]:
        caller = getattr(self.pm.hook, hook)
        # the essential plugin first, then plugins by name: deterministic, whatever pluggy's order
        return sorted(
            caller.get_hookimpls(),
            key=lambda impl: (impl.plugin_name != "valetkey", impl.plugin_name),
        )

    def _call(self, hook: str, impl: Any, **kwargs: Any) -> None:
        args = [kwargs[name] for name in impl.argnames]
        try:
            impl.function(*args)
        except Exception as exc:
            message = f"plugin {impl.plugin_name!r} failed in {hook}: {type(exc).__name__}: {exc}"
            if self.policy.strict:
                raise PluginError(message) from exc
            log.error("%s", message)
            self._problems.append(message)
            record = self._records.get(impl.plugin_name)
            if record is not None and record.error is None:
                record.error = message

    # ------------------------------------------------------------------ drivers

    @cached_property
    def _drivers(self) -> dict[str, dict[str, Driver]]:
        found: dict[str, dict[str, Driver]] = {kind: {} for kind in DRIVER_HOOKS}
        for kind, hook in DRIVER_HOOKS.items():
            for impl in self._impls(hook):
                plugin = impl.plugin_name

                def register(
                    name: str,
                    factory: Callable[[PluginContext], Any],
                    *,
                    default: bool = False,
                    _kind: str = kind,
                    _plugin: str = plugin,
                ) -> None:
                    if not isinstance(name, str) or not name:
                        raise PluginError(f"a {_kind} needs a non-empty name")
                    if not callable(factory):
                        raise PluginError(f"{_kind} {name!r}: factory is not callable")
                    existing = found[_kind].get(name)
                    if existing is not None:
                        self._problems.append(
                            f"{_kind} {name!r} is registered by both {existing.plugin!r} and "
                            f"{_plugin!r}; keeping {existing.plugin!r}'s"
                        )
                        return
                    found[_kind][name] = Driver(_kind, name, _plugin, factory, default)

                self._call(hook, impl, register=register)
        return found

    def drivers(self, kind: str) -> dict[str, Driver]:
        """Registered drivers of ``kind`` by name."""
        return dict(self._drivers[kind])

    def selected(self, kind: str) -> Driver:
        """The driver in force for a single-choice kind (see ``[select]``)."""
        if (chosen := self._selected.get(kind)) is not None:
            return chosen
        self._selected[kind] = driver = self._select(kind)
        return driver

    def _select(self, kind: str) -> Driver:
        drivers = self._drivers[kind]
        known = ", ".join(sorted(drivers)) or "none"
        chosen = self.policy.select.get(kind)
        if chosen is not None:
            if chosen not in drivers:
                raise ConfigError(
                    f"[select] {kind} = {chosen!r}: no such {kind} is registered (known: {known})"
                )
            return drivers[chosen]
        if len(drivers) == 1:
            return next(iter(drivers.values()))
        if not drivers:
            raise ConfigError(
                f"no {kind} is available: install or enable a plugin that provides one "
                "(see 'valetkey plugins list')"
            )
        defaults = [d for d in drivers.values() if d.default]
        if len(defaults) == 1:
            return defaults[0]
        raise ConfigError(
            f"several {kind} drivers are registered ({known}): choose one with "
            f'[select] {kind} = "<name>" in plugins.toml'
        )

    def _instance(self, driver: Driver) -> Any:
        key = (driver.kind, driver.name)
        if key not in self._instances:
            ctx = PluginContext(
                plugin=driver.plugin, config=self.plugin_config(driver.plugin), kernel=self
            )
            try:
                self._instances[key] = driver.factory(ctx)
            except (ConfigError, PluginError):
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {driver.plugin!r} could not build {driver.kind} {driver.name!r}: "
                    f"{type(exc).__name__}: {redact_text(str(exc))}"
                ) from exc
        return self._instances[key]

    @property
    def store(self) -> Store:
        """The selected store (``async with kernel`` opens it)."""
        store: Store = self._instance(self.selected("store"))
        return store

    @property
    def secret_store(self) -> SecretStore:
        """The selected secret store."""
        secrets: SecretStore = self._instance(self.selected("secret_store"))
        return secrets

    @property
    def sealer(self) -> Sealer:
        """The selected sealer."""
        sealer: Sealer = self._instance(self.selected("sealer"))
        return sealer

    def runtime(self, name: str | None = None) -> BoxRuntime:
        """A box runtime by name, or the selected one."""
        if name is None:
            return self._instance(self.selected("box_runtime"))  # type: ignore[no-any-return]
        drivers = self._drivers["box_runtime"]
        if name not in drivers:
            known = ", ".join(sorted(drivers)) or "none"
            raise NotFound(f"no box runtime named {name!r} (known: {known})")
        return self._instance(drivers[name])  # type: ignore[no-any-return]

    @property
    def broker(self) -> CredentialBroker:
        """The selected credential broker, built once per kernel."""
        broker: CredentialBroker = self._instance(self.selected("broker"))
        return broker

    def response_transformer(self, kind: str) -> ResponseTransformer:
        """A response transformer by kind."""
        drivers = self._drivers["response_transformer"]
        if kind not in drivers:
            known = ", ".join(sorted(drivers)) or "none"
            raise NotFound(f"no response transformer {kind!r} (known: {known})")
        return self._instance(drivers[kind])  # type: ignore[no-any-return]

    def credential_provider(self, name: str) -> CredentialProvider:
        """A credential provider by name."""
        drivers = self._drivers["credential_provider"]
        if name not in drivers:
            known = ", ".join(sorted(drivers)) or "none"
            raise NotFound(f"no credential provider named {name!r} (known: {known})")
        return self._instance(drivers[name])  # type: ignore[no-any-return]

    @property
    def notifiers(self) -> list[Notifier]:
        """Every enabled notifier, by name (raises if one cannot be built)."""
        return [self._instance(d) for _, d in sorted(self._drivers["notifier"].items())]

    @property
    def box_hooks(self) -> list[tuple[str, BoxHook]]:
        """Every enabled box lifecycle hook with its name, in name order."""
        return [(n, self._instance(d)) for n, d in sorted(self._drivers["box_hook"].items())]

    async def notify(self, notification: Notification) -> None:
        """Start delivering to every notifier and return at once: a slow or retrying notifier
        (a webhook backing off) never holds up the caller. Deliveries finish in the background;
        ``drain_notifications()`` (and closing the kernel) waits for them."""
        import asyncio

        task = asyncio.get_running_loop().create_task(self._deliver(notification))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain_notifications(self, timeout: float = 60.0) -> None:
        """Wait for deliveries in flight; give up (and log) after ``timeout`` seconds."""
        if not self._pending:
            return
        import asyncio

        pending = set(self._pending)
        _done, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            log.error(
                "%d notification delivery(ies) still running after %.0fs; cancelled",
                len(late),
                timeout,
            )

    async def _deliver(self, notification: Notification) -> None:
        """Deliver to every notifier in turn; one that cannot be built or fails is logged and
        does not stop the others."""
        for name, driver in sorted(self._drivers["notifier"].items()):
            try:
                notifier: Notifier = self._instance(driver)
                await notifier.notify(notification)
            except Exception as exc:
                log.error(
                    "notifier %s failed for %s: %s: %s",
                    name,
                    notification.kind,
                    type(exc).__name__,
                    exc,
                )

    # ------------------------------------------------------------------ catalog and serving

    @cached_property
    def connectors(self) -> ConnectorCatalog:
        """Every registered connector; a slug registered twice keeps the first plugin's."""
        seen: dict[str, tuple[Connector, str]] = {}
        for impl in self._impls("valetkey_register_connectors"):
            plugin = impl.plugin_name

            def register(connector: Connector, _plugin: str = plugin) -> None:
                if not isinstance(connector, Connector):
                    raise PluginError(
                        f"register() takes a Connector, not {type(connector).__name__}"
                    )
                if connector.slug in seen:
                    self._problems.append(
                        f"connector {connector.slug!r} is registered by both "
                        f"{seen[connector.slug][1]!r} and {_plugin!r}; keeping the first"
                    )
                    return
                seen[connector.slug] = (connector, _plugin)

            self._call("valetkey_register_connectors", impl, register=register, kernel=self)
        return ConnectorCatalog(c for c, _ in seen.values())

    def doctor(self) -> list[str]:
        """Every plugin's own problems (``valetkey_doctor``), each prefixed with its plugin."""
        found: list[str] = []
        kwargs = {"kernel": self}
        for impl in self._impls("valetkey_doctor"):
            try:
                problems = impl.function(*[kwargs[name] for name in impl.argnames])
                found.extend(f"plugin {impl.plugin_name!r}: {p}" for p in problems or [])
            except Exception as exc:
                found.append(
                    f"plugin {impl.plugin_name!r} failed in valetkey_doctor: "
                    f"{type(exc).__name__}: {exc}"
                )
        return found

    def register_commands(self, app: Any) -> None:
        """Let every plugin add its CLI commands to ``app``."""
        for impl in self._impls("valetkey_register_commands"):
            self._call("valetkey_register_commands", impl, app=app, kernel=self)

    def routes(self) -> list[Route]:
        """Every plugin's mounted ASGI apps; prefixes are unique and not reserved."""
        routes: dict[str, Route] = {}
        for impl in self._impls("valetkey_register_routes"):
            plugin = impl.plugin_name

            def register(prefix: str, app: Any, _plugin: str = plugin) -> None:
                if not prefix.startswith("/") or prefix.rstrip("/") in RESERVED_PREFIXES:
                    raise PluginError(f"route prefix {prefix!r} is invalid or reserved")
                key = prefix.rstrip("/") or "/"
                if key in routes:
                    raise PluginError(f"route prefix {key!r} is taken by {routes[key].plugin!r}")
                routes[key] = Route(key, app, _plugin)

            self._call("valetkey_register_routes", impl, register=register, kernel=self)
        return list(routes.values())

    def mcp_tools(self) -> list[McpTool]:
        """Every plugin's MCP tools; names are unique across plugins."""
        tools: dict[str, McpTool] = {}
        for impl in self._impls("valetkey_register_mcp_tools"):
            plugin = impl.plugin_name

            def register(
                fn: Callable[..., Awaitable[Any]],
                *,
                name: str | None = None,
                description: str | None = None,
                _plugin: str = plugin,
            ) -> None:
                tool_name = name or fn.__name__
                if tool_name in tools:
                    raise PluginError(
                        f"MCP tool {tool_name!r} is registered by both "
                        f"{tools[tool_name].plugin!r} and {_plugin!r}"
                    )
                tools[tool_name] = McpTool(fn, tool_name, description, _plugin)

            self._call("valetkey_register_mcp_tools", impl, register=register, kernel=self)
        return list(tools.values())

    def services(self) -> list[Service]:
        """Every plugin's background services."""
        services: list[Service] = []
        for impl in self._impls("valetkey_register_services"):
            plugin = impl.plugin_name

            def register(
                name: str, fn: Callable[[], Awaitable[None]], _plugin: str = plugin
            ) -> None:
                services.append(Service(name, fn, _plugin))

            self._call("valetkey_register_services", impl, register=register, kernel=self)
        return services

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Kernel:
        store = self.store
        await store.open()
        self._opened = store
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every runtime that was built and the store, even when one of them fails."""
        from contextlib import AsyncExitStack

        await self.drain_notifications()
        async with AsyncExitStack() as stack:
            if self._opened is not None:
                stack.push_async_callback(self._opened.close)
                self._opened = None
            for (kind, _name), instance in list(self._instances.items()):
                if kind == "box_runtime":
                    stack.push_async_callback(instance.close)
                elif kind in ("notifier", "credential_provider"):
                    closer = getattr(instance, "aclose", None)  # HTTP clients and the like
                    if callable(closer):
                        stack.push_async_callback(closer)


def load(
    *,
    config: Path | None = None,
    home: Path | None = None,
    extra_plugins: Mapping[str, object] | None = None,
    policy: Policy | None = None,
    tolerant: bool = False,
) -> Kernel:
    """Build a kernel: read the policy, discover and register plugins.

    :param config: a plugins.toml (default: see :mod:`valetkey.paths`).
    :param home: the state folder (default: ``$VALETKEY_HOME`` or the XDG data folder).
    :param extra_plugins: objects registered as if they were installed plugins (tests).
    :param policy: an already-parsed policy (overrides ``config``).
    :param tolerant: do not raise for a missing required plugin (``plugins doctor`` reports it).
    """
    if policy is None:
        policy = load_policy(config if config is not None else find_config())
    loaded = load_plugins(policy, dict(extra_plugins or {}))
    if loaded.missing_required and not tolerant:
        raise PluginError(f"{loaded.missing_required[0]} (see 'valetkey plugins doctor')")
    return Kernel(policy, loaded, home if home is not None else default_home())
