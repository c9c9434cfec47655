"""The relay host over real sockets: the connect page, the machine WebSocket (auth, one live
connection per relay, frame limit, malformed frames), and the public MCP endpoint (401, 503,
429, 413, 504, 202, 405), then the official MCP client through the relay to a real MCP server
served by the real dispatcher loop."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3

import anyio
import httpx
import pytest

from valetkey_relay.protocol import McpResponse, decode_frame, token_hash

pytestmark = pytest.mark.anyio

LIST = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def ws_url(base: str) -> str:
    return "ws" + base.removeprefix("http") + "ws/"


@contextlib.asynccontextmanager
async def machine(base, token, **headers):
    from websockets.asyncio.client import connect

    async with connect(
        ws_url(base), additional_headers={"Authorization": f"Bearer {token}", **headers}
    ) as ws:
        yield ws


async def answer_one(ws, body_for=None):
    """Read one mcp-request and answer it (by default echoing its method)."""
    frame = decode_frame(await ws.recv())
    result = body_for(frame) if body_for else {"echo": frame.method, "params": frame.params}
    body = {"jsonrpc": "2.0", "id": "ignored", "result": result}
    await ws.send(McpResponse(frame.request_id, body).encode())
    return frame


async def post(base, body, token=None, headers=None):
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=20) as client:
        content = body if isinstance(body, bytes | str) else json.dumps(body)
        return await client.post(f"{base}mcp", content=content, headers={**sent, **(headers or {})})


async def relay_with_token(host):
    relay_id, base, machine_token = host.create_relay()
    access = await host.add_access_token(relay_id)
    return relay_id, base, machine_token, access


# ----------------------------------------------------------------------------- connect page


def test_the_connect_page_creates_a_relay_and_stores_only_hashes(relay_host):
    host = relay_host()
    page = httpx.get(f"{host.url}/connect")
    assert page.status_code == 200 and "<form method=post" in page.text
    assert page.headers["cache-control"] == "no-store"
    relay_id, base, token = host.create_relay("ann's laptop")
    assert base == f"{host.url}/relay/{relay_id}/"
    assert token.startswith("vkm_") and len(token) == 47
    db = sqlite3.connect(host.home / "valetkey.db")
    rows = db.execute("SELECT id, machine_token_hash, owner FROM relays").fetchall()
    assert rows == [(relay_id, token_hash(token), "ann's laptop")]
    blob = b"".join(p.read_bytes() for p in host.home.rglob("*") if p.is_file())
    assert token.encode() not in blob
    second = host.create_relay()
    assert second[0] != relay_id and second[2] != token
    assert httpx.get(f"{host.url}/", follow_redirects=False).headers["location"] == "/connect"


def test_the_connect_page_stops_at_max_relays(relay_host):
    host = relay_host(max_relays=1)
    host.create_relay()
    full = httpx.post(f"{host.url}/connect", data={})
    assert full.status_code == 503 and "This relay host is full" in full.text


# ----------------------------------------------------------------------------- machine socket


async def test_the_machine_socket_needs_the_machine_token(relay_host, caplog):
    from websockets.exceptions import InvalidStatus

    host = relay_host()
    relay_id, base, token = host.create_relay()
    for bad_token, where in [("vkm_wrong_token_x", base), (token, base.replace(relay_id, "nope"))]:
        with pytest.raises(InvalidStatus) as info:
            async with machine(where, bad_token):
                pass
        assert info.value.response.status_code == 401
        assert b"machine token rejected" in info.value.response.body
    from websockets.asyncio.client import connect

    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(base)):
            pass
    assert info.value.response.status_code == 401
    assert not host.hub.connected(relay_id)
    assert f"relay {relay_id}: refused a machine connection (bad or no token)" in (warnings(caplog))
    assert not any(token in m for m in [r.getMessage() for r in caplog.records])


async def test_one_live_connection_per_relay_the_newest_wins(relay_host):
    host = relay_host()
    _relay_id, base, token, access = await relay_with_token(host)
    async with machine(base, token) as first, machine(base, token) as second:
        await first.wait_closed()
        assert (first.close_code, first.close_reason) == (4000, "superseded by a newer connection")
        async with anyio.create_task_group() as group:
            group.start_soon(answer_one, second)
            response = await post(base, LIST, access)
        assert response.status_code == 200
        assert response.json()["result"]["echo"] == "tools/list"


async def test_a_probe_does_not_supersede_the_live_connection(relay_host):
    host = relay_host()
    _relay_id, base, token, access = await relay_with_token(host)
    async with machine(base, token) as live:
        async with machine(base, token, **{"X-Valetkey-Relay-Probe": "1"}) as probe:
            await probe.wait_closed()
            assert probe.close_code == 1000
        async with anyio.create_task_group() as group:
            group.start_soon(answer_one, live)
            assert (await post(base, LIST, access)).status_code == 200


async def test_malformed_frames_from_the_machine_are_ignored_and_logged(relay_host, caplog):
    host = relay_host()
    relay_id, base, token, access = await relay_with_token(host)
    async with machine(base, token) as ws:

        async def misbehave_then_answer():
            frame = decode_frame(await ws.recv())
            await ws.send("{{{ not json")
            await ws.send(json.dumps({"type": "mcp-request", "request_id": "x", "method": "m"}))
            await ws.send(
                json.dumps(
                    {"type": "mcp-request", "request_id": "x", "method": "m", "jsonrpc_id": 1}
                )
            )
            await ws.send(McpResponse("r999", {"jsonrpc": "2.0", "id": 1, "result": {}}).encode())
            body = {"jsonrpc": "2.0", "id": 0, "result": {"late": True}}
            await ws.send(McpResponse(frame.request_id, body).encode())

        async with anyio.create_task_group() as group:
            group.start_soon(misbehave_then_answer)
            response = await post(base, LIST, access)
    assert response.status_code == 200
    assert response.json() == {"jsonrpc": "2.0", "id": 7, "result": {"late": True}}
    logged = warnings(caplog)
    assert f"relay {relay_id}: ignored a malformed frame: frame of 12 bytes is not JSON" in logged
    assert (
        f"relay {relay_id}: ignored a malformed frame: mcp-request frame without a valid "
        "jsonrpc_id" in logged
    )
    assert f"relay {relay_id}: ignored an unexpected mcp-request frame" in logged
    assert f"relay {relay_id}: ignored an answer nobody waits for" in logged


async def test_a_frame_over_the_limit_closes_the_machine_connection(relay_host):
    host = relay_host(max_frame_bytes=4096)
    relay_id, base, token = host.create_relay()
    async with machine(base, token) as ws:
        await ws.send(McpResponse("r1", {"jsonrpc": "2.0", "id": 1, "result": "x" * 8000}).encode())
        await ws.wait_closed()
        assert ws.close_code == 1009
    with anyio.fail_after(5):
        while host.hub.connected(relay_id):
            await anyio.sleep(0.01)


# ----------------------------------------------------------------------------- public endpoint


async def test_public_callers_need_an_access_token_of_that_relay(relay_host):
    host = relay_host()
    _relay_id, base, token, access = await relay_with_token(host)
    _other_id, _other_base, _t, other_access = await relay_with_token(host)
    async with machine(base, token):
        for credential in (None, "vkr_wrong", other_access, token):
            response = await post(base, LIST, credential)
            assert response.status_code == 401, credential
            assert response.headers["www-authenticate"] == 'Bearer realm="valetkey-relay"'
            assert "valetkey relay token create" in response.json()["message"]
        async with httpx.AsyncClient() as client:
            anonymous_get = await client.get(f"{base}mcp")
            assert anonymous_get.status_code == 401
            get = await client.get(f"{base}mcp", headers={"Authorization": f"Bearer {access}"})
            assert (get.status_code, get.headers["allow"]) == (405, "POST")


async def test_503_with_a_clear_body_when_the_machine_is_not_connected(relay_host):
    host = relay_host()
    relay_id, base, _token, access = await relay_with_token(host)
    response = await post(base, LIST, access)
    assert response.status_code == 503
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {
            "code": -32001,
            "message": f"relay {relay_id}: the machine is not connected right now (its owner "
            "starts it with 'valetkey relay serve')",
        },
    }


async def test_bad_bodies_get_json_rpc_errors_and_reach_no_machine(relay_host):
    host = relay_host(max_frame_bytes=2048)
    _relay_id, base, token, access = await relay_with_token(host)
    async with machine(base, token) as ws:
        cases = [
            (b"{not json", 400, -32700, "Parse error"),
            (b"[]", 400, -32600, "the body must be one JSON-RPC request (no batches)"),
            (b'{"jsonrpc": "2.0", "id": true, "method": "x"}', 400, -32600, "Invalid request"),
            (b'{"jsonrpc": "2.0", "id": 1}', 400, -32600, "Invalid request"),
            (
                b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}',
                400,
                -32600,
                "Invalid request",
            ),
            (
                json.dumps({**LIST, "params": {"pad": "x" * 4000}}).encode(),
                413,
                -32600,
                "request body over 2048 bytes",
            ),
        ]
        for body, status, code, message in cases:
            response = await post(base, body, access)
            assert response.status_code == status, body
            assert response.json()["error"] == {"code": code, "message": message}
        notification = await post(
            base, {"jsonrpc": "2.0", "method": "notifications/initialized"}, access
        )
        assert (notification.status_code, notification.content) == (202, b"")
        with anyio.move_on_after(0.2) as nothing:
            await ws.recv()
        assert nothing.cancelled_caught  # none of them was forwarded


async def test_the_rate_limit_is_per_relay(relay_host):
    host = relay_host(rate_per_second=0.5, burst=2)
    relay_id, base, _token, access = await relay_with_token(host)
    _other_id, other_base, _t2, other_access = await relay_with_token(host)
    statuses = [(await post(base, LIST, access)).status_code for _ in range(3)]
    assert statuses == [503, 503, 429]  # not connected, but the budget is spent all the same
    limited = await post(base, LIST, access)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["message"].startswith(f"relay {relay_id}: too many requests")
    assert (await post(other_base, LIST, other_access)).status_code == 503  # its own budget


async def test_a_machine_that_does_not_answer_in_time_is_504(relay_host):
    host = relay_host(call_timeout=0.5)
    relay_id, base, token, access = await relay_with_token(host)
    async with machine(base, token) as ws:
        response = await post(base, LIST, access)
        assert response.status_code == 504
        assert response.json()["error"] == {
            "code": -32002,
            "message": f"relay {relay_id}: the machine did not answer within 0.5s",
        }
        frame = decode_frame(await ws.recv())  # it was forwarded, just never answered
        assert frame.method == "tools/list" and frame.jsonrpc_id == 7


async def test_requests_in_flight_fail_fast_when_the_machine_goes(relay_host):
    host = relay_host(call_timeout=30)
    _relay_id, base, token, access = await relay_with_token(host)
    async with machine(base, token) as ws:

        async def leave():
            await ws.recv()
            await ws.close()

        async with anyio.create_task_group() as group:
            group.start_soon(leave)
            with anyio.fail_after(5):
                response = await post(base, LIST, access)
    assert response.status_code == 200
    assert response.json()["error"] == {
        "code": -32603,
        "message": "the machine disconnected before answering",
    }
    assert response.json()["id"] == 7


async def test_the_envelope_carries_the_protocol_version_and_keeps_the_caller_id(relay_host):
    host = relay_host()
    _relay_id, base, token, access = await relay_with_token(host)
    async with machine(base, token) as ws, anyio.create_task_group() as group:
        seen = []

        async def record():
            seen.append(await answer_one(ws))

        group.start_soon(record)
        response = await post(
            base,
            {"jsonrpc": "2.0", "id": "caller-1", "method": "tools/call", "params": {"name": "x"}},
            access,
            headers={"MCP-Protocol-Version": "2025-11-25"},
        )
    (frame,) = seen
    assert (frame.jsonrpc_id, frame.method, frame.params) == (
        "caller-1",
        "tools/call",
        {"name": "x"},
    )
    assert frame.protocol_version == "2025-11-25"
    assert frame.request_id != "caller-1"  # the relay's own id, not the caller's
    assert response.json()["id"] == "caller-1"


# ----------------------------------------------------------------------------- whole path


async def test_the_official_mcp_client_through_the_relay(relay_host):
    """The real dispatcher loop (valetkey_relay.client.serve) with an MCP server, and mcp's own
    Client over streamable HTTP at /relay/<id>/mcp, next to the same server called directly."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.mcpserver import MCPServer

    from valetkey_relay.client import ServeOptions, serve
    from valetkey_relay.credential import Credential

    def factory():
        server = MCPServer("through-the-relay")

        @server.tool()
        async def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        return server

    host = relay_host()
    relay_id, base, token, access = await relay_with_token(host)
    async with anyio.create_task_group() as group:
        group.start_soon(serve, Credential(base, relay_id, token), factory, ServeOptions())
        with anyio.fail_after(10):
            while not host.hub.connected(relay_id):
                await anyio.sleep(0.02)
        for mode in ("auto", "legacy"):
            async with (
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {access}"}) as http,
                Client(streamable_http_client(f"{base}mcp", http_client=http), mode=mode) as c,
                Client(factory(), mode=mode) as direct,
            ):
                relayed_tools = (await c.list_tools()).tools
                assert [t.name for t in relayed_tools] == ["add"]
                assert relayed_tools == (await direct.list_tools()).tools
                result = await c.call_tool("add", {"a": 20, "b": 22})
                assert (result.is_error, result.structured_content) == (False, {"result": 42})
                bad = await c.call_tool("add", {"a": "x"})
                assert bad.is_error
        group.cancel_scope.cancel()
