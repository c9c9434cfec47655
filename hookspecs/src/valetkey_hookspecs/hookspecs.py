"""The valetkey hook specifications.

Every hook is a synchronous *registry* hook (the llm / tox style): the kernel passes a ``register``
callback and keeps the policy — naming, duplicates, selection and order — itself. What a plugin
registers is a factory or an object whose methods may be ``async``; the hook never is.

An implementation may accept fewer arguments than the spec names (pluggy's rule), so hooks can
grow new arguments without breaking plugins. Every hook here is documented, with its exact
signature, in ``docs/plugin-hooks.md``; a meta test keeps the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .interfaces import (
    BoxHook,
    BoxRuntime,
    CredentialBroker,
    CredentialProvider,
    KernelAPI,
    Notifier,
    RegisterConnector,
    RegisterFactory,
    RegisterMcpTool,
    RegisterRoute,
    RegisterService,
    ResponseTransformer,
    Sealer,
    SecretStore,
    Store,
)
from .markers import _hookspec as hookspec

if TYPE_CHECKING:
    import cyclopts


@hookspec
def valetkey_config_schema() -> type[Any] | None:
    """Declare the type of this plugin's ``[plugin.<name>]`` table in plugins.toml.

    Return a dataclass, ``msgspec.Struct`` or ``TypedDict`` class; the kernel validates the table
    against it (after resolving ``{"$env" = ...}`` / ``{"$file" = ...}`` references) and hands the
    resulting object to the plugin's factories as ``ctx.config``. A plugin that returns nothing
    takes no configuration, and a table for it is a configuration error.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_connectors(register: RegisterConnector, kernel: KernelAPI) -> None:
    """Register connector definitions (providers valetkey can connect to).

    :param register: call ``register(connector)`` once per :class:`~valetkey_hookspecs.Connector`.
        A slug registered twice is reported as a plugin error naming both plugins.
    :param kernel: the kernel (for ``kernel.plugin_config(...)``; nothing is opened).

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_credential_providers(register: RegisterFactory[CredentialProvider]) -> None:
    """Register credential providers (OAuth flows, API-key prompts) by name.

    :param register: ``register(name, factory)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.CredentialProvider` and is called on first use.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_stores(register: RegisterFactory[Store]) -> None:
    """Register store drivers. One is selected: ``[select] store = "name"`` in plugins.toml, else
    the only one registered, else the one registered with ``default=True``.

    :param register: ``register(name, factory, default=False)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.Store` (not yet opened: the kernel awaits ``open()``).

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_secret_stores(register: RegisterFactory[SecretStore]) -> None:
    """Register secret-store drivers (where valetkey keeps its own KEK and machine tokens).
    Selected like stores, with ``[select] secret_store``.

    :param register: ``register(name, factory, default=False)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.SecretStore`.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_sealers(register: RegisterFactory[Sealer]) -> None:
    """Register sealer drivers (envelope encryption of credentials). Selected with
    ``[select] sealer``.

    :param register: ``register(name, factory, default=False)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.Sealer`.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_box_runtimes(register: RegisterFactory[BoxRuntime]) -> None:
    """Register box runtimes (container engines). ``[select] box_runtime`` picks the default;
    ``kernel.runtime(name)`` reaches any registered one.

    :param register: ``register(name, factory, default=False)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.BoxRuntime`.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_box_hooks(register: RegisterFactory[BoxHook]) -> None:
    """Register box lifecycle hooks. Every enabled hook runs, in name order, on each box create
    (files to inject, state to keep) and destroy (with that state).

    :param register: ``register(name, factory)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.BoxHook`.

    .. versionadded:: 0.2
    """


@hookspec
def valetkey_register_notifiers(register: RegisterFactory[Notifier]) -> None:
    """Register notifiers. Every enabled notifier receives every notification.

    :param register: ``register(name, factory)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.Notifier`.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_brokers(register: RegisterFactory[CredentialBroker]) -> None:
    """Register credential brokers: what other plugins (the proxy, boxes) call to vend an owner's
    credentials. ``[select] broker`` picks one when several are installed; ``kernel.broker`` is
    built once per kernel so every caller in a process shares its in-flight refreshes.

    :param register: ``register(name, factory, default=False)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.CredentialBroker`.

    .. versionadded:: 0.2
    """


@hookspec
def valetkey_register_response_transformers(
    register: RegisterFactory[ResponseTransformer],
) -> None:
    """Register response transformers for the credential proxy, by kind (``response-scrub``,
    ``oauth-endpoint-workaround``, …). A run names the kinds it wants for a host; the proxy
    buffers such responses up to the transformer's ``max_body`` and calls ``transform``.

    :param register: ``register(kind, factory)``; ``factory(ctx)`` returns a
        :class:`~valetkey_hookspecs.ResponseTransformer`.

    .. versionadded:: 0.2
    """


@hookspec
def valetkey_register_commands(app: cyclopts.App, kernel: KernelAPI) -> None:
    """Add CLI commands to ``valetkey``.

    :param app: the root ``cyclopts.App``. Register lazily so ``valetkey --help`` stays fast:
        ``app.command("my_plugin.cli:group", name="thing", help="...")``.
    :param kernel: the kernel (nothing is opened yet; commands open what they need).

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_routes(register: RegisterRoute, kernel: KernelAPI) -> None:
    """Mount HTTP routes into ``valetkey serve``.

    :param register: ``register(prefix, asgi_app)``; the prefix (``/api``, ``/auth``) must be
        unique; ``/healthz`` and ``/mcp`` belong to the kernel.
    :param kernel: the kernel, opened before the first request is served.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_mcp_tools(register: RegisterMcpTool, kernel: KernelAPI) -> None:
    """Add tools to the one MCP endpoint (``/mcp``) of ``valetkey serve``.

    :param register: ``register(async_fn, name=None, description=None)``; the function's typed
        parameters become the tool's input schema and its docstring the description. Tool names
        are unique across plugins. A tool never takes or returns a secret.
    :param kernel: the kernel, opened before the first call.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_register_services(register: RegisterService, kernel: KernelAPI) -> None:
    """Add background services (schedulers, reapers) that run inside ``valetkey serve``.

    :param register: ``register(name, async_fn)``; ``await async_fn()`` runs in the server's task
        group until it is cancelled at shutdown. An exception is logged and the service restarted
        after a pause; it does not stop the server.
    :param kernel: the kernel, opened before services start.

    .. versionadded:: 0.1
    """


@hookspec
def valetkey_doctor(kernel: KernelAPI) -> list[str] | None:
    """Report this plugin's own problems for ``valetkey plugins doctor`` (a bad user connector
    file, an unreachable keyring or container engine, ...). Keep it quick and side-effect free.

    :param kernel: the kernel (nothing is opened).
    :return: one line per problem, naming what is wrong and where; nothing when all is well.

    .. versionadded:: 0.1
    """
