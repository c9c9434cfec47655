"""Table tests of the shared protocol module: relay URLs, WebSocket URLs, token masking, the
attach line in its many pasted forms, and envelope frames (well-formed and malformed)."""

from __future__ import annotations

import json

import pytest

from valetkey_hookspecs import InvalidInput
from valetkey_relay.protocol import (
    FrameError,
    McpRequest,
    McpResponse,
    check_token,
    decode_frame,
    mask_token,
    mcp_url,
    new_access_token,
    new_machine_token,
    new_relay_id,
    parse_attach_line,
    parse_relay_url,
    token_hash,
    websocket_url,
)

TOKEN = "vkm_" + "A" * 43


@pytest.mark.parametrize(
    ("raw", "base", "relay_id"),
    [
        ("https://relay.example/relay/rly_1/", "https://relay.example/relay/rly_1/", "rly_1"),
        ("https://relay.example/relay/rly_1", "https://relay.example/relay/rly_1/", "rly_1"),
        ("https://relay.example/relay/rly_1/mcp", "https://relay.example/relay/rly_1/", "rly_1"),
        ("https://relay.example/relay/rly_1/ws/", "https://relay.example/relay/rly_1/", "rly_1"),
        (
            "https://relay.example/relay/rly_1/a/b?x=1#frag",
            "https://relay.example/relay/rly_1/",
            "rly_1",
        ),
        (
            "https://relay.example/base/relay/SR-x_9/",
            "https://relay.example/base/relay/SR-x_9/",
            "SR-x_9",
        ),
        ("HTTPS://Relay.Example:8443/relay/r/", "https://relay.example:8443/relay/r/", "r"),
        ("http://127.0.0.1:8770/relay/rly_1/", "http://127.0.0.1:8770/relay/rly_1/", "rly_1"),
        ("  https://relay.example/relay/rly_1/  ", "https://relay.example/relay/rly_1/", "rly_1"),
        ("http://[::1]:8770/relay/rly_1/", "http://[::1]:8770/relay/rly_1/", "rly_1"),
    ],
)
def test_parse_relay_url(raw, base, relay_id):
    assert parse_relay_url(raw) == (base, relay_id)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "relay URL is empty"),
        ("   ", "relay URL is empty"),
        ("ftp://relay.example/relay/rly_1/", "must start with https://"),
        ("ws://relay.example/relay/rly_1/", "must start with https://"),
        ("relay.example/relay/rly_1/", "must start with https://"),
        ("https:///relay/rly_1/", "has no host"),
        ("https://relay.example/rly_1/", "has no /relay/<id>/"),
        ("https://relay.example/", "has no /relay/<id>/"),
        ("https://relay.example/relay/", "empty relay id"),
        ("https://relay.example/relay//mcp", "empty relay id"),
        ("https://relay.example/relay", "empty relay id"),
        ("https://relay.example/relay/a%20b/", "may only hold"),
        ("https://relay.example:99999/relay/r/", "not a valid URL"),
        ("https://user:pw@relay.example/relay/r/", "user name or password"),
    ],
)
def test_parse_relay_url_rejects(raw, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace("/", "/")):
        parse_relay_url(raw)


def test_errors_never_show_a_query_string():
    with pytest.raises(InvalidInput) as info:
        parse_relay_url("https://relay.example/nothing?token=vkm_secret123")
    assert "vkm_secret123" not in str(info.value)


@pytest.mark.parametrize(
    ("base", "ws"),
    [
        ("https://relay.example/relay/rly_1/", "wss://relay.example/relay/rly_1/ws/"),
        ("http://127.0.0.1:8770/relay/rly_1/", "ws://127.0.0.1:8770/relay/rly_1/ws/"),
        ("https://relay.example/relay/rly_1", "wss://relay.example/relay/rly_1/ws/"),
        ("https://relay.example/p/relay/rly_1/mcp?x", "wss://relay.example/p/relay/rly_1/ws/"),
    ],
)
def test_websocket_url(base, ws):
    assert websocket_url(base) == ws


def test_mcp_url():
    assert mcp_url("https://r.example/relay/x/ws/") == "https://r.example/relay/x/mcp"


@pytest.mark.parametrize(
    ("token", "masked"),
    [
        ("", "****"),
        ("a", "****"),
        ("abcd", "****"),
        ("abcde", "abcd...********"),
        (TOKEN, "vkm_...********"),
    ],
)
def test_mask_token(token, masked):
    assert mask_token(token) == masked


def test_new_tokens_and_ids_are_random_and_shaped():
    assert new_machine_token().startswith("vkm_") and len(new_machine_token()) == 47
    assert new_access_token().startswith("vkr_") and new_access_token() != new_access_token()
    relay_id = new_relay_id()
    assert parse_relay_url(f"https://r.example/relay/{relay_id}/")[1] == relay_id
    assert token_hash("x") == token_hash("x") != token_hash("y")
    assert len(token_hash("x")) == 64


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("a b", "spaces"),
        ("tök", "printable ASCII"),
        ("x" * 513, "too long"),
    ],
)
def test_check_token_rejects_without_echoing(token, message):
    with pytest.raises(InvalidInput, match=message) as info:
        check_token(token)
    if token.strip():
        assert token not in str(info.value)


URL = "https://relay.example/relay/rly_1/"


@pytest.mark.parametrize(
    "line",
    [
        f"{URL} {TOKEN}",
        f"{TOKEN} {URL}",
        f"{URL}\n{TOKEN}\n",
        f"  `{URL} {TOKEN}`  ",
        f"valetkey relay attach {URL} {TOKEN}",
        f"$ valetkey relay attach --url {URL} --token {TOKEN}",
        f"valetkey relay attach --url={URL} --token={TOKEN} --force",
        f"url={URL} token={TOKEN}",
        f"'{URL}' '{TOKEN}'",
        f'"{URL}" "{TOKEN}"',
        json.dumps({"url": URL, "token": TOKEN}),
        json.dumps({"relay_url": URL, "machine_token": TOKEN}),
        f"{URL.rstrip('/')}/mcp {TOKEN}",
    ],
)
def test_parse_attach_line_forms(line):
    assert parse_attach_line(line) == (URL, TOKEN)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "attach line is empty"),
        (TOKEN, "no relay URL"),
        (URL, "no machine token"),
        (f"{URL} {URL} {TOKEN}", "more than one URL"),
        (f"{URL} {TOKEN} extra", "more than one candidate"),
        (f"https://relay.example/nope/ {TOKEN}", "has no /relay/<id>/"),
        ("{not json", "does not parse"),
        ("[1, 2]", "no relay URL"),
        (json.dumps({"url": URL}), "needs string fields"),
        (json.dumps([URL]), "no relay URL"),
    ],
)
def test_parse_attach_line_rejects(line, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")) as info:
        parse_attach_line(line)
    assert TOKEN not in str(info.value)


def test_request_and_response_frames_round_trip():
    request = McpRequest("r1", 7, "tools/call", {"name": "x"}, "2025-11-25")
    assert decode_frame(request.encode()) == request
    bare = McpRequest("r2", "a", "tools/list")
    assert json.loads(bare.encode()) == {
        "type": "mcp-request",
        "request_id": "r2",
        "jsonrpc_id": "a",
        "method": "tools/list",
        "params": None,
    }
    response = McpResponse("r1", {"jsonrpc": "2.0", "id": 7, "result": {}})
    assert decode_frame(response.encode()) == response
    assert decode_frame(response.encode().encode()) == response  # bytes frames too


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"type": "hello", "request_id": "r"}', "unknown frame type 'hello'"),
        ('{"request_id": "r"}', "unknown frame type 'None'"),
        ('{"type": "mcp-request", "method": "x", "jsonrpc_id": 1}', "valid request_id"),
        ('{"type": "mcp-request", "request_id": "", "jsonrpc_id": 1}', "valid request_id"),
        ('{"type": "mcp-request", "request_id": "r", "jsonrpc_id": 1}', "without a method"),
        ('{"type": "mcp-request", "request_id": "r", "method": "m"}', "valid jsonrpc_id"),
        (
            '{"type": "mcp-request", "request_id": "r", "method": "m", "jsonrpc_id": true}',
            "valid jsonrpc_id",
        ),
        (
            '{"type": "mcp-request", "request_id": "r", "method": "m", "jsonrpc_id": 1, '
            '"params": [1]}',
            "params must be an object",
        ),
        (
            '{"type": "mcp-request", "request_id": "r", "method": "m", "jsonrpc_id": 1, '
            '"protocol_version": 3}',
            "protocol_version must be a string",
        ),
        ('{"type": "mcp-response", "request_id": "r"}', "JSON-RPC 2.0 body"),
        ('{"type": "mcp-response", "request_id": "r", "body": {"id": 1}}', "JSON-RPC 2.0 body"),
        (
            '{"type": "mcp-response", "request_id": "r", "body": {"jsonrpc": "2.0", "id": 1}}',
            "exactly one of result and error",
        ),
    ],
)
def test_malformed_frames_say_why(frame, message):
    with pytest.raises(FrameError, match=message):
        decode_frame(frame)


def test_oversized_frames_are_refused_before_parsing():
    big = McpRequest("r", 1, "m", {"x": "y" * 2000}).encode()
    with pytest.raises(FrameError, match="over the 1024-byte limit"):
        decode_frame(big, max_bytes=1024)
