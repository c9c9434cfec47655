"""Pieces of ``valetkey serve`` in process: services are supervised (restarted after a failure,
cancelled at shutdown) and MCP tool errors keep their clear message."""

from __future__ import annotations

import anyio
import pytest

from valetkey.kernel import Service, load
from valetkey.policy import parse_policy
from valetkey.serve.services import supervise
from valetkey_hookspecs import InvalidInput, hookimpl

pytestmark = pytest.mark.anyio


async def test_a_failing_service_is_restarted_and_cancellation_stops_it(caplog):
    runs = []

    async def flaky() -> None:
        runs.append("start")
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(supervise, Service("flaky", flaky, "p0"), 0.01)
        with anyio.fail_after(5):
            while len(runs) < 2:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert runs == ["start", "start"]
    assert "service flaky (p0) failed; restarting" in caplog.text
    assert "RuntimeError: first run fails" in caplog.text


async def test_tool_errors_keep_their_message_and_hide_others():
    from mcp import Client

    from valetkey.serve.mcp import build_mcp_server

    class Tools:
        @hookimpl
        def valetkey_register_mcp_tools(self, register):
            async def create_thing(name: str) -> str:
                """Create a thing."""
                if name == "UPPER":
                    raise InvalidInput("thing name 'UPPER' must be lower case")
                if name == "bug":
                    raise RuntimeError("internal detail gho_secretvalue123")
                return f"made {name}"

            register(create_thing)

    kernel = load(
        policy=parse_policy({"autoload": False, "enable": ["t"]}), extra_plugins={"t": Tools()}
    )
    async with Client(build_mcp_server(kernel)) as client:
        ok = await client.call_tool("create_thing", {"name": "box"})
        assert not ok.is_error and ok.content[0].text == "made box"
        bad = await client.call_tool("create_thing", {"name": "UPPER"})
        assert bad.is_error
        assert bad.content[0].text.endswith("thing name 'UPPER' must be lower case")
        bug = await client.call_tool("create_thing", {"name": "bug"})
        assert bug.is_error
        assert "gho_secretvalue123" not in bug.content[0].text
        schema = next(t for t in (await client.list_tools()).tools if t.name == "create_thing")
        assert schema.input_schema["required"] == ["name"]
