"""The probe and the dispatcher loop against a real WebSocket server on 127.0.0.1 (a stand-in for
the relay host): the envelope both ways, concurrency, malformed frames, timeouts, -32603 on
internal failures, the frame size limit, reconnects with a fresh MCP server, and the rejected
token."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import anyio
import pytest

from valetkey_relay.client import (
    Backoff,
    ProbeUnauthorized,
    RelayServeError,
    RelayUnavailable,
    ServeOptions,
    probe,
    serve,
)
from valetkey_relay.credential import Credential
from valetkey_relay.protocol import McpRequest, decode_frame

pytestmark = pytest.mark.anyio


def make_server():
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("relay-test")

    @server.tool()
    async def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then answer."""
        await anyio.sleep(seconds)
        return "slept"

    @server.tool()
    async def big(size: int) -> str:
        """A long answer."""
        return "x" * size

    return server


def cred_for(relay, token=None):
    return Credential(relay.url, relay.relay_id, token or relay.token)


def options(**changes):
    base = {"backoff_initial": 0.05, "backoff_cap": 0.2, "ping_interval": 5.0}
    return ServeOptions(**{**base, **changes})


async def call(ws, request_id, method, params=None, jsonrpc_id=None, version="2025-11-25"):
    await ws.send(
        McpRequest(request_id, jsonrpc_id or request_id, method, params, version).encode()
    )


async def answers(ws, count, timeout=10.0):
    got = {}
    with anyio.fail_after(timeout):
        while len(got) < count:
            frame = decode_frame(await ws.recv())
            got[frame.request_id] = frame.body
    return got


def tool_call(name, **arguments):
    return {"name": name, "arguments": arguments}


# ----------------------------------------------------------------------------- backoff


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_connection():
    backoff = Backoff()
    assert [backoff.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay(connected_for=59) == 30  # a short connection does not reset
    assert backoff.next_delay(connected_for=61) == 1
    assert backoff.next_delay() == 2


# ----------------------------------------------------------------------------- probe


async def test_probe_accepts_a_good_token_and_says_it_is_a_probe(fake_relay):
    await probe(cred_for(fake_relay))
    assert fake_relay.handshakes[-1]["X-Valetkey-Relay-Probe"] == "1"
    assert fake_relay.handshakes[-1]["Authorization"] == f"Bearer {fake_relay.token}"


async def test_probe_maps_401_to_unauthorized(fake_relay):
    with pytest.raises(ProbeUnauthorized) as info:
        await probe(cred_for(fake_relay, token="vkm_wrong_token_123"))
    message = str(info.value)
    assert "the relay rejected the machine token (HTTP 401)" in message
    assert "re-run 'valetkey relay connect'" in message
    assert "vkm_wrong_token_123" not in message


async def test_probe_reports_other_statuses_and_unreachable_relays(fake_relay):
    wrong_path = Credential(
        f"http://127.0.0.1:{fake_relay.port}/relay/other/", "other", fake_relay.token
    )
    with pytest.raises(RelayUnavailable, match="answered HTTP 404 instead of a WebSocket"):
        await probe(wrong_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    closed = Credential(f"http://127.0.0.1:{port}/relay/r/", "r", "vkm_x1234567")
    with pytest.raises(RelayUnavailable, match=f"cannot reach the relay at 127.0.0.1:{port}"):
        await probe(closed)


async def test_probe_is_bounded_by_its_timeout():
    with socket.socket() as silent:  # accepts connections, never answers the handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RelayUnavailable, match=r"did not answer within 0\.3s"):
            await probe(Credential(f"http://127.0.0.1:{port}/relay/r/", "r", "vkm_x12345"), 0.3)
        assert time.monotonic() - started < 3


# ----------------------------------------------------------------------------- serve


async def run_serve(relay, factory=make_server, **changes):
    """Start ``serve`` in a task group; returns (group, first connection, factory calls)."""
    calls = []

    def counted():
        calls.append(1)
        return factory()

    group = anyio.create_task_group()
    await group.__aenter__()
    group.start_soon(serve, cred_for(relay), counted, options(**changes))
    ws = await relay.next_connection()
    return group, ws, calls


async def stop(group):
    group.cancel_scope.cancel()
    await group.__aexit__(None, None, None)


async def test_serve_answers_requests_with_the_envelope(fake_relay):
    group, ws, _calls = await run_serve(fake_relay)
    try:
        await call(ws, "r1", "tools/list", jsonrpc_id=41)
        await call(ws, "r2", "tools/call", tool_call("add", a=2, b=3), jsonrpc_id="abc")
        got = await answers(ws, 2)
        assert got["r1"]["id"] == 41 and got["r1"]["jsonrpc"] == "2.0"
        assert sorted(t["name"] for t in got["r1"]["result"]["tools"]) == ["add", "big", "slow"]
        assert got["r2"]["id"] == "abc"
        assert got["r2"]["result"]["structuredContent"] == {"result": 5}
        await call(ws, "r3", "no/such/method", jsonrpc_id=3)
        assert (await answers(ws, 1))["r3"]["error"]["code"] == -32601
    finally:
        await stop(group)


async def test_serve_answers_initialize_and_modern_requests(fake_relay):
    group, ws, _calls = await run_serve(fake_relay)
    try:
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        await call(ws, "i", "initialize", init, version=None)
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        await call(ws, "m", "tools/call", {**tool_call("add", a=1, b=1), "_meta": meta})
        got = await answers(ws, 2)
        assert got["i"]["result"]["protocolVersion"] == "2025-11-25"
        assert got["m"]["result"]["structuredContent"] == {"result": 2}
    finally:
        await stop(group)


async def test_requests_are_handled_concurrently(fake_relay):
    group, ws, _calls = await run_serve(fake_relay)
    try:
        await call(ws, "slow", "tools/call", tool_call("slow", seconds=1.0))
        await call(ws, "fast", "tools/call", tool_call("add", a=1, b=2))
        with anyio.fail_after(5):
            first = decode_frame(await ws.recv())
            second = decode_frame(await ws.recv())
        assert [first.request_id, second.request_id] == ["fast", "slow"]
    finally:
        await stop(group)


async def test_malformed_and_unknown_frames_are_ignored_and_logged(fake_relay, relay_log):
    group, ws, _calls = await run_serve(fake_relay)
    try:
        await ws.send("not json at all")
        await ws.send(json.dumps({"type": "hello", "request_id": "x"}))
        await ws.send(json.dumps({"type": "mcp-request", "request_id": "y"}))
        await ws.send(
            json.dumps(
                {"type": "mcp-response", "request_id": "z", "body": {"jsonrpc": "2.0", "result": 1}}
            )
        )
        await call(ws, "ok", "tools/call", tool_call("add", a=2, b=2))
        got = await answers(ws, 1)
        assert list(got) == ["ok"]  # nothing answered the bad frames, the loop kept going
    finally:
        await stop(group)
    warnings = relay_log.messages(logging.WARNING)
    assert "ignored a malformed frame from the relay: frame of 15 bytes is not JSON" in warnings
    assert "ignored a malformed frame from the relay: unknown frame type 'hello'" in warnings
    assert (
        "ignored a malformed frame from the relay: mcp-request frame without a method" in warnings
    )
    assert "ignored an unexpected mcp-response frame from the relay" in warnings


async def test_a_call_over_the_timeout_is_answered_32603(fake_relay):
    group, ws, _calls = await run_serve(fake_relay, call_timeout=0.3)
    try:
        started = time.monotonic()
        await call(ws, "t", "tools/call", tool_call("slow", seconds=10), jsonrpc_id=9)
        body = (await answers(ws, 1))["t"]
        assert time.monotonic() - started < 3
        assert body == {
            "jsonrpc": "2.0",
            "id": 9,
            "error": {"code": -32603, "message": "tools/call timed out after 0.3s on the machine"},
        }
    finally:
        await stop(group)


async def test_an_internal_failure_is_32603_without_its_details(fake_relay, relay_log):
    from mcp.server import Server

    async def broken_list(ctx, params):
        raise RuntimeError("database password is hunter2-secret")

    def factory():
        return Server("broken", on_list_tools=broken_list)

    group, ws, _calls = await run_serve(fake_relay, factory=factory)
    try:
        await call(ws, "b", "tools/list", jsonrpc_id=5)
        body = (await answers(ws, 1))["b"]
        assert body == {
            "jsonrpc": "2.0",
            "id": 5,
            "error": {"code": -32603, "message": "Internal error"},
        }
    finally:
        await stop(group)
    assert "relayed tools/list failed: RuntimeError" in relay_log.messages(logging.ERROR)


async def test_an_answer_over_the_frame_limit_becomes_an_error(fake_relay):
    group, ws, _calls = await run_serve(fake_relay, max_frame_bytes=4096)
    try:
        await call(ws, "big", "tools/call", tool_call("big", size=10_000), jsonrpc_id=1)
        body = (await answers(ws, 1))["big"]
        assert body["error"] == {
            "code": -32603,
            "message": "the answer is over the relay's frame size limit (4096 bytes)",
        }
        await call(ws, "small", "tools/call", tool_call("big", size=10), jsonrpc_id=2)
        assert "result" in (await answers(ws, 1))["small"]
    finally:
        await stop(group)


async def test_a_frame_over_the_limit_closes_the_connection_and_it_reconnects(fake_relay):
    group, ws, calls = await run_serve(fake_relay, max_frame_bytes=4096)
    try:
        await ws.send(McpRequest("huge", 1, "tools/list", {"pad": "y" * 8000}).encode())
        await ws.wait_closed()
        assert ws.close_code == 1009  # message too big
        again = await fake_relay.next_connection()
        await call(again, "after", "tools/call", tool_call("add", a=1, b=1))
        assert "result" in (await answers(again, 1))["after"]
        assert len(calls) == 2  # a fresh MCP server for the new connection
    finally:
        await stop(group)


async def test_reconnects_with_backoff_and_a_fresh_server(fake_relay, relay_log):
    group, ws, calls = await run_serve(fake_relay)
    try:
        await ws.close(1012, "restarting")
        ws2 = await fake_relay.next_connection()
        await ws2.close(1011)
        ws3 = await fake_relay.next_connection()
        await call(ws3, "r", "tools/call", tool_call("add", a=4, b=4))
        assert (await answers(ws3, 1))["r"]["result"]["structuredContent"] == {"result": 8}
        assert len(calls) == 3
    finally:
        await stop(group)
    retries = [m for m in relay_log.messages(logging.WARNING) if "reconnecting in" in m]
    assert retries[0] == (
        "relay rly_fake: connection closed by the relay (1012: restarting); reconnecting in 0.05s"
    )
    assert retries[1].endswith("reconnecting in 0.1s")


async def test_a_rejected_token_stops_serve(fake_relay):
    cred = cred_for(fake_relay, token="vkm_revoked_token_1")
    with anyio.fail_after(10), pytest.raises(ProbeUnauthorized, match="HTTP 401"):
        await serve(cred, make_server, options())


async def test_a_factory_error_aborts_with_a_message(fake_relay):
    def factory():
        raise ValueError("no tools today")

    with pytest.raises(RelayServeError, match="cannot build the MCP server for the relay: "):
        await serve(cred_for(fake_relay), factory, options())
    assert fake_relay.connections.empty()  # never dialled


async def test_an_unreachable_relay_is_retried(relay_log):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cred = Credential(f"http://127.0.0.1:{port}/relay/r/", "r", "vkm_x1234567")
    with anyio.move_on_after(0.5):
        await serve(cred, make_server, options())
    retries = [m for m in relay_log.messages(logging.WARNING) if "reconnecting in" in m]
    assert len(retries) >= 3
    assert retries[0].startswith(f"relay r: cannot reach the relay at 127.0.0.1:{port}")
    assert [r.rsplit(" ", 1)[1] for r in retries[:4]] == ["0.05s", "0.1s", "0.2s", "0.2s"][
        : len(retries[:4])
    ]


async def test_ws_idle_pings_keep_the_connection(fake_relay):
    group, ws, _calls = await run_serve(fake_relay, ping_interval=0.1)
    try:
        await asyncio.sleep(0.5)  # several client pings answered by the server's pongs
        await call(ws, "p", "tools/call", tool_call("add", a=0, b=0))
        assert "result" in (await answers(ws, 1))["p"]
    finally:
        await stop(group)
