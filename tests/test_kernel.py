"""The kernel facade: driver selection, duplicates, per-plugin config, factory failures,
notification fan-out, and composition of commands, routes, MCP tools and services."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from valetkey.kernel import load
from valetkey.policy import parse_policy
from valetkey_hookspecs import (
    AuthSpec,
    AuthType,
    ConfigError,
    Connector,
    NotFound,
    Notification,
    PluginError,
    hookimpl,
)


def kernel_with(*plugins, **policy):
    names = {f"p{i}": p for i, p in enumerate(plugins)}
    doc = {"autoload": False, "enable": list(names), **policy}
    return load(policy=parse_policy(doc), extra_plugins=names)


class StoreA:
    @hookimpl
    def valetkey_register_stores(self, register):
        register("a", lambda ctx: ("store-a", ctx.plugin, ctx.config), default=True)


class StoreB:
    @hookimpl
    def valetkey_register_stores(self, register):
        register("b", lambda ctx: ("store-b", ctx.plugin))


def test_the_only_driver_is_selected():
    assert kernel_with(StoreB()).store == ("store-b", "p0")


def test_the_default_wins_among_several_and_select_overrides():
    assert kernel_with(StoreA(), StoreB()).store[0] == "store-a"
    assert kernel_with(StoreA(), StoreB(), select={"store": "b"}).store[0] == "store-b"


def test_unknown_selection_and_missing_driver_are_clear():
    with pytest.raises(ConfigError) as info:
        _ = kernel_with(StoreA(), select={"store": "zz"}).store
    assert str(info.value) == "[select] store = 'zz': no such store is registered (known: a)"
    with pytest.raises(ConfigError, match="no store is available"):
        _ = kernel_with().store


def test_several_without_a_default_asks_for_select():
    class StoreC:
        @hookimpl
        def valetkey_register_stores(self, register):
            register("c", lambda ctx: "c")

    with pytest.raises(ConfigError, match=r"several store drivers are registered \(b, c\)"):
        _ = kernel_with(StoreB(), StoreC()).store


def test_a_duplicate_driver_name_is_a_problem_and_the_first_is_kept():
    class AlsoA:
        @hookimpl
        def valetkey_register_stores(self, register):
            register("a", lambda ctx: "impostor")

    kernel = kernel_with(StoreA(), AlsoA())
    assert kernel.store[0] == "store-a"
    assert "store 'a' is registered by both 'p0' and 'p1'; keeping 'p0''s" in kernel.problems


def test_each_factory_gets_its_own_validated_config():
    @dataclass
    class Cfg:
        size: int = 1

    class Configured(StoreA):
        @hookimpl
        def valetkey_config_schema(self):
            return Cfg

    kernel = kernel_with(Configured(), plugin={"p0": {"size": 7}})
    assert kernel.store == ("store-a", "p0", Cfg(size=7))
    bad = kernel_with(Configured(), plugin={"p0": {"size": "big"}})
    with pytest.raises(ConfigError, match=r"\[plugin.p0\]: Expected `int`, got `str`"):
        _ = bad.store
    assert bad.config_problems() == [
        "[plugin.p0]: Expected `int`, got `str` - at `[plugin.p0].size`"
    ]


def test_a_factory_that_raises_becomes_a_plugin_error_naming_it():
    class Exploding:
        @hookimpl
        def valetkey_register_stores(self, register):
            register("x", lambda ctx: 1 / 0)

    with pytest.raises(PluginError) as info:
        _ = kernel_with(Exploding()).store
    assert str(info.value) == (
        "plugin 'p0' could not build store 'x': ZeroDivisionError: division by zero"
    )


def test_a_registry_hook_that_raises_is_recorded_not_fatal():
    class Bad:
        @hookimpl
        def valetkey_register_connectors(self, register):
            raise ValueError("catalog file unreadable")

    class Good:
        @hookimpl
        def valetkey_register_connectors(self, register):
            register(Connector(slug="ok", name="Ok", auth=AuthSpec(type=AuthType.API_KEY)))

    kernel = kernel_with(Bad(), Good())
    assert [c.slug for c in kernel.connectors] == ["ok"]
    assert kernel.problems == [
        "plugin 'p0' failed in valetkey_register_connectors: ValueError: catalog file unreadable"
    ]
    with pytest.raises(PluginError, match="catalog file unreadable"):
        _ = kernel_with(Bad(), strict=True).connectors


def test_connector_lookup_and_duplicate_slugs():
    def plugin(name):
        class P:
            @hookimpl
            def valetkey_register_connectors(self, register):
                register(Connector(slug="acme", name=name, auth=AuthSpec(type=AuthType.API_KEY)))

        return P()

    kernel = kernel_with(plugin("first"), plugin("second"))
    assert kernel.connectors.get("acme").name == "first"
    assert (
        "connector 'acme' is registered by both 'p0' and 'p1'; keeping the first" in kernel.problems
    )
    with pytest.raises(NotFound, match="unknown connector 'nope'"):
        kernel.connectors.get("nope")


@pytest.mark.anyio
async def test_notify_reaches_every_notifier_even_when_one_fails(caplog):
    got = []

    class Good:
        name = "good"

        async def notify(self, n):
            got.append(n.kind)

    class Broken:
        name = "broken"

        async def notify(self, n):
            raise RuntimeError("smtp down")

    class P:
        @hookimpl
        def valetkey_register_notifiers(self, register):
            register("broken", lambda ctx: Broken())
            register("good", lambda ctx: Good())

    kernel = kernel_with(P())
    with caplog.at_level(logging.ERROR, logger="valetkey.kernel"):
        await kernel.notify(Notification(kind="needs_reauth", message="m"))
        await kernel.drain_notifications()
    assert got == ["needs_reauth"]
    assert "notifier broken failed for needs_reauth: RuntimeError: smtp down" in caplog.text


def test_mcp_tools_routes_services_and_commands_are_collected_with_their_plugin():
    async def tool_a() -> str:
        return "a"

    async def svc() -> None:
        return None

    class P:
        @hookimpl
        def valetkey_register_mcp_tools(self, register):
            register(tool_a, description="A")

        @hookimpl
        def valetkey_register_routes(self, register, kernel):
            register("/thing", object())

        @hookimpl
        def valetkey_register_services(self, register):
            register("svc", svc)

        @hookimpl
        def valetkey_register_commands(self, app):
            app.command(lambda: 7, name="seven")

    kernel = kernel_with(P())
    tools = {t.name: t.plugin for t in kernel.mcp_tools()}
    assert tools == {"tool_a": "p0", "valetkey_status": "valetkey"}
    assert [(r.prefix, r.plugin) for r in kernel.routes()] == [("/thing", "p0")]
    assert [(s.name, s.plugin) for s in kernel.services()] == [("svc", "p0")]
    from valetkey.cli.main import build_app

    assert build_app(kernel)(["seven"], result_action="return_value") == 7


def test_duplicate_tools_and_reserved_routes_are_refused():
    async def t() -> None:
        return None

    class P:
        @hookimpl
        def valetkey_register_mcp_tools(self, register):
            register(t, name="valetkey_status")

        @hookimpl
        def valetkey_register_routes(self, register):
            register("/mcp", object())

    kernel = kernel_with(P())
    kernel.mcp_tools()
    kernel.routes()
    assert (
        "plugin 'p0' failed in valetkey_register_mcp_tools: PluginError: MCP tool "
        "'valetkey_status' is registered by both 'valetkey' and 'p0'" in kernel.problems
    )
    assert any("route prefix '/mcp' is invalid or reserved" in p for p in kernel.problems)


def test_the_essential_plugin_cannot_be_disabled():
    kernel = load(policy=parse_policy({"disable": ["valetkey"], "autoload": False}))
    assert [p.name for p in kernel.plugins if p.loaded] == ["valetkey"]


def test_box_runtimes_and_credential_providers_by_name():
    class P:
        @hookimpl
        def valetkey_register_box_runtimes(self, register):
            register("fake-engine", lambda ctx: "engine")

        @hookimpl
        def valetkey_register_credential_providers(self, register):
            register("pkce", lambda ctx: "provider")

    kernel = kernel_with(P())
    assert kernel.runtime() == "engine" and kernel.runtime("fake-engine") == "engine"
    assert kernel.credential_provider("pkce") == "provider"
    with pytest.raises(NotFound, match=r"no box runtime named 'docker' \(known: fake-engine\)"):
        kernel.runtime("docker")
    with pytest.raises(NotFound, match=r"no credential provider named 'x' \(known: pkce\)"):
        kernel.credential_provider("x")


def test_the_broker_is_built_once_per_kernel_and_transformers_are_found_by_kind():
    built = []

    class P:
        @hookimpl
        def valetkey_register_brokers(self, register):
            register("house", lambda ctx: built.append(ctx.kernel) or f"broker#{len(built)}")

        @hookimpl
        def valetkey_register_response_transformers(self, register):
            register("response-scrub", lambda ctx: "scrubber")

    kernel = kernel_with(P())
    assert kernel.broker == "broker#1" and kernel.broker == "broker#1"
    assert built == [kernel]
    assert kernel.response_transformer("response-scrub") == "scrubber"
    with pytest.raises(NotFound, match=r"no response transformer 'x' \(known: response-scrub\)"):
        kernel.response_transformer("x")


def test_box_hooks_are_every_registered_one_in_name_order():
    class P:
        @hookimpl
        def valetkey_register_box_hooks(self, register):
            register("zeta", lambda ctx: "z-hook")
            register("alpha", lambda ctx: "a-hook")

    kernel = kernel_with(P())
    assert kernel.box_hooks == [("alpha", "a-hook"), ("zeta", "z-hook")]
    assert kernel_with().box_hooks == []


def test_no_broker_installed_says_what_to_do():
    kernel = kernel_with()
    with pytest.raises(ConfigError, match="no broker is available: install or enable a plugin"):
        _ = kernel.broker


def test_doctor_collects_each_plugins_own_problems():
    class Unwell:
        @hookimpl
        def valetkey_doctor(self, kernel):
            return ["connectors/acme.toml: auth.token_url is missing"]

    class Fine:
        @hookimpl
        def valetkey_doctor(self):
            return []

    class Crashing:
        @hookimpl
        def valetkey_doctor(self):
            raise OSError("keyring locked")

    kernel = kernel_with(Unwell(), Fine(), Crashing())
    assert kernel.doctor() == [
        "plugin 'p0': connectors/acme.toml: auth.token_url is missing",
        "plugin 'p2' failed in valetkey_doctor: OSError: keyring locked",
    ]


@pytest.mark.anyio
async def test_a_notifier_that_cannot_be_built_does_not_stop_the_others(caplog):
    got = []

    class Good:
        name = "good"

        async def notify(self, n):
            got.append(n.kind)

    class P:
        @hookimpl
        def valetkey_register_notifiers(self, register):
            register("a-broken", lambda ctx: (_ for _ in ()).throw(ValueError("bad level")))
            register("good", lambda ctx: Good())

    kernel = kernel_with(P())
    with caplog.at_level(logging.ERROR, logger="valetkey.kernel"):
        await kernel.notify(Notification(kind="needs_reauth", message="m"))
        await kernel.drain_notifications()
    assert got == ["needs_reauth"]
    assert "notifier a-broken failed for needs_reauth: PluginError" in caplog.text


def test_factory_errors_are_redacted():
    class Leaky:
        @hookimpl
        def valetkey_register_stores(self, register):
            def factory(ctx):
                raise RuntimeError("connect failed for postgres://app:hunter2secret@db/x")

            register("x", factory)

    with pytest.raises(PluginError) as info:
        _ = kernel_with(Leaky()).store
    assert "hunter2secret" not in str(info.value)
    assert "postgres://app:[REDACTED]@db/x" in str(info.value)


def test_the_same_module_under_two_names_is_recorded_not_a_crash():
    import types

    module = types.ModuleType("vk_twice")
    kernel = kernel_with(module, module)
    records = {p.name: p for p in kernel.plugins}
    assert records["p0"].loaded
    assert records["p1"].error == "the same module is already registered as plugin 'p0'"


def test_box_spec_repr_shows_env_names_not_values():
    from valetkey_hookspecs import BoxSpec

    spec = BoxSpec(box_id="b1", image="img", env={"GITHUB_TOKEN": "ghp_realvalue123"})
    assert "ghp_realvalue123" not in repr(spec)
    assert "GITHUB_TOKEN" in repr(spec)


@pytest.mark.anyio
async def test_notify_returns_at_once_and_closing_waits_for_delivery():
    import asyncio
    import time

    delivered, closed = [], []

    class Slow:
        name = "slow"

        async def notify(self, n):
            await asyncio.sleep(0.3)
            delivered.append(n.kind)

        async def aclose(self):
            closed.append(True)

    class P:
        @hookimpl
        def valetkey_register_notifiers(self, register):
            register("slow", lambda ctx: Slow())

    kernel = kernel_with(P())
    started = time.monotonic()
    await kernel.notify(Notification(kind="needs_reauth", message="m"))
    assert time.monotonic() - started < 0.1 and delivered == []
    await kernel.aclose()
    assert delivered == ["needs_reauth"] and closed == [True]
