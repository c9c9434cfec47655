"""The ``/mcp/{run}/{name}`` relay against a real MCP server (the official SDK's ``MCPServer``
served by uvicorn on 127.0.0.1) that demands ``Authorization: Bearer <real token>`` and records
every request it gets: the upstream sees the real token, the agent only its run token; every
refusal is answered without contacting the upstream; the official MCP client lists and calls
tools through real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest
import uvicorn

from valetkey.kernel import load
from valetkey.policy import parse_policy
from valetkey_hookspecs import (
    AuthSpec,
    AuthType,
    Connector,
    Injection,
    InvalidInput,
    Secret,
    hookimpl,
)
from valetkey_proxy import mcp_relay
from valetkey_proxy.config import ProxyConfig
from valetkey_proxy.exchange import Request, Response
from valetkey_proxy.gate import Gate
from valetkey_proxy.mcp_relay import McpRelay
from valetkey_proxy.runs import McpServerSpec, Registry, RunSpec

pytestmark = pytest.mark.anyio

REAL = "acme-mcp-real-token-1234567890"
PROTOCOL = "2025-06-18"


class Catalog:
    @hookimpl
    def valetkey_register_connectors(self, register):
        register(
            Connector(
                slug="acme",
                name="Acme",
                auth=AuthSpec(type=AuthType.API_KEY),
                injection=Injection(
                    # the local MCP servers these tests start: a grant's credential goes only
                    # to its own hosts, MCP servers included
                    hosts=("api.acme.test", "127.0.0.1", "localhost"),
                    env_var="ACME_TOKEN",
                    remove_headers=("X-Agent-Key",),
                    add_headers={"X-Acme-Client": "valetkey"},
                ),
            )
        )
        register(
            Connector(
                slug="other",
                name="Other",
                auth=AuthSpec(type=AuthType.API_KEY),
                injection=Injection(hosts=("api.other.test",), env_var="OTHER_TOKEN"),
            )
        )


class Upstream:
    """A real MCP server behind a gate of its own: only ``Bearer REAL`` gets through."""

    def __init__(self):
        from mcp.server.mcpserver import MCPServer

        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.token = REAL
        server = MCPServer("acme-upstream")

        @server.tool()
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        @server.tool()
        def echo_auth() -> str:
            """Repeat the Authorization header of the last request (a leaky server)."""
            return self.seen[-1][2].get("authorization", "")

        self.app = server.streamable_http_app(streamable_http_path="/mcp")
        self.port = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.seen.append((scope["method"], scope["path"], headers))
            if headers.get("authorization") != f"Bearer {self.token}":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"bad token"}'})
                return
        await self.app(scope, receive, send)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/mcp"


@contextlib.asynccontextmanager
async def serve(app, lifespan="on", tls=None):
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan)
    if tls is not None:
        config.load()
        config.ssl = tls  # a server-side ssl.SSLContext (uvicorn itself takes only files)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def upstream():
    up = Upstream()
    async with serve(up) as port:
        up.port = port
        yield up


@pytest.fixture
async def kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    doc = {
        "autoload": False,
        "enable": ["store-sqlite", "secrets-keyring", "sealer-local", "broker", "catalog"],
    }
    k = load(policy=parse_policy(doc), home=tmp_path / "home", extra_plugins={"catalog": Catalog()})
    async with k:
        yield k


@pytest.fixture
def registry():
    return Registry()


@pytest.fixture
def gate(kernel, registry):
    return Gate(kernel, registry, ProxyConfig())


@pytest.fixture
async def relay(kernel, gate):
    r = McpRelay(kernel)
    gate.local_handlers[mcp_relay.PREFIX] = r.handle
    yield r
    await r.aclose()


async def connect(kernel, slug, key, owner="ann"):
    conn = await kernel.broker.create_connection(owner, slug)
    await kernel.broker.store_secret(owner, conn.id, Secret(api_key=key))
    return conn


async def mcp_run(kernel, gate, registry, servers, grants=("acme",)):
    if "acme" in grants:
        await connect(kernel, "acme", REAL)
    run = await gate.prepare(RunSpec(owner="ann", grants=list(grants), mcp_servers=servers))
    registry.add(run)
    return run


def rpc(run, method, params=None, *, id_=1, session=None, target=None, verb="POST", extra=()):
    headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Authorization", f"Bearer {run.token}"),
        ("MCP-Protocol-Version", PROTOCOL),
        *extra,
    ]
    if session:
        headers.append(("Mcp-Session-Id", session))
    message = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if id_ is not None:
        message["id"] = id_
    return Request(
        verb,
        "http",
        "127.0.0.1",
        8080,
        target or f"/mcp/{run.run_id}/acme",
        headers,
        json.dumps(message).encode() if verb == "POST" else b"",
    )


def result_of(response: Response):
    """The JSON-RPC message of a JSON or SSE answer."""
    text = response.body.decode()
    if response.headers and dict((k.lower(), v) for k, v in response.headers)[
        "content-type"
    ].startswith("text/event-stream"):
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        text = [d for d in data if d][-1]
    return json.loads(text)


def error_of(response: Response) -> str:
    return json.loads(response.body)["error"]


def header(response: Response, name: str):
    return next((v for k, v in response.headers if k.lower() == name), None)


INIT = {
    "protocolVersion": PROTOCOL,
    "capabilities": {},
    "clientInfo": {"name": "test", "version": "0"},
}


# ------------------------------------------------------------------ relaying


async def test_relays_a_session_with_the_real_token_and_only_mcp_headers(
    kernel, gate, registry, relay, upstream
):
    run = await mcp_run(kernel, gate, registry, [McpServerSpec("acme", upstream.url, grant="acme")])
    ph = gate.run_env(run)["ACME_TOKEN"]
    init = await gate.local(
        rpc(
            run,
            "initialize",
            INIT,
            extra=[("X-Agent-Key", ph), ("Cookie", "agent=1"), ("X-Other", "x")],
        ),
        None,
    )
    assert init.status == 200, init.body
    session = header(init, "mcp-session-id")
    assert session and result_of(init)["result"]["serverInfo"]["name"] == "acme-upstream"
    await gate.local(rpc(run, "notifications/initialized", id_=None, session=session), None)
    tools = await gate.local(rpc(run, "tools/list", id_=2, session=session), None)
    assert {t["name"] for t in result_of(tools)["result"]["tools"]} == {"add", "echo_auth"}
    call = await gate.local(
        rpc(
            run,
            "tools/call",
            {"name": "add", "arguments": {"a": 2, "b": 40}},
            id_=3,
            session=session,
        ),
        None,
    )
    assert result_of(call)["result"]["content"][0]["text"] == "42"
    method, path, seen = upstream.seen[0]
    assert (method, path) == ("POST", "/mcp")
    assert seen["authorization"] == f"Bearer {REAL}"
    assert seen["x-acme-client"] == "valetkey"
    for dropped in ("x-agent-key", "cookie", "x-other"):
        assert dropped not in seen
    assert seen["mcp-protocol-version"] == PROTOCOL
    assert all(s[2]["authorization"] == f"Bearer {REAL}" for s in upstream.seen)
    assert not any(run.token in json.dumps(s) for s in upstream.seen)
    assert upstream.seen[-1][2]["mcp-session-id"] == session
    # DELETE ends the session upstream
    end = await gate.local(rpc(run, "", verb="DELETE", session=session), None)
    assert end.status in (200, 204) and upstream.seen[-1][0] == "DELETE"


async def test_the_real_token_in_an_upstream_answer_is_redacted(
    kernel, gate, registry, relay, upstream
):
    run = await mcp_run(kernel, gate, registry, [McpServerSpec("acme", upstream.url, grant="acme")])
    init = await gate.local(rpc(run, "initialize", INIT), None)
    session = header(init, "mcp-session-id")
    leak = await gate.local(
        rpc(run, "tools/call", {"name": "echo_auth", "arguments": {}}, id_=2, session=session),
        None,
    )
    assert result_of(leak)["result"]["content"][0]["text"] == "Bearer [REDACTED]"
    assert REAL.encode() not in leak.body


async def test_a_path_after_the_name_and_the_query_reach_the_upstream(
    kernel, gate, registry, relay, upstream
):
    run = await mcp_run(
        kernel,
        gate,
        registry,
        [McpServerSpec("acme", f"http://127.0.0.1:{upstream.port}/base", grant="acme")],
    )
    response = await gate.local(
        rpc(run, "initialize", INIT, target=f"/mcp/{run.run_id}/acme/sub/path?x=1"), None
    )
    assert response.status == 404  # the upstream's own answer: it serves /mcp only
    assert upstream.seen[-1][:2] == ("POST", "/base/sub/path")


async def test_a_server_without_a_grant_is_relayed_without_a_credential(
    kernel, gate, registry, relay, upstream
):
    run = await mcp_run(kernel, gate, registry, [McpServerSpec("open", upstream.url)])
    response = await gate.local(
        rpc(run, "initialize", INIT, target=f"/mcp/{run.run_id}/open"), None
    )
    assert response.status == 401 and response.body == b'{"error":"bad token"}'
    assert "authorization" not in upstream.seen[-1][2]


async def test_a_refreshed_credential_is_used_on_the_next_request(
    kernel, gate, registry, relay, upstream
):
    run = await mcp_run(kernel, gate, registry, [McpServerSpec("acme", upstream.url, grant="acme")])
    conn_id = run.resolved.bindings[0].connection_id
    await kernel.broker.store_secret("ann", conn_id, Secret(api_key="acme-rotated-token-999"))
    upstream.token = "acme-rotated-token-999"
    response = await gate.local(rpc(run, "initialize", INIT), None)
    assert response.status == 200
    assert upstream.seen[-1][2]["authorization"] == "Bearer acme-rotated-token-999"


async def test_https_upstreams_are_verified_against_the_system_store_and_the_extra_ca(
    kernel, gate, registry, tmp_path
):
    from valetkey_proxy.ca import LocalCA

    upstream_ca = LocalCA.load_or_create(tmp_path / "upstream-ca", sealer=None)
    up = Upstream()
    async with serve(up, tls=upstream_ca.server_context("127.0.0.1")) as port:
        up.port = port
        url = f"https://127.0.0.1:{port}/mcp"
        run = await mcp_run(kernel, gate, registry, [McpServerSpec("acme", url, grant="acme")])
        untrusting = McpRelay(kernel)
        trusting = McpRelay(kernel, config=ProxyConfig(extra_ca_file=str(upstream_ca.cert_path)))
        try:
            gate.local_handlers[mcp_relay.PREFIX] = untrusting.handle
            refused = await gate.local(rpc(run, "initialize", INIT), None)
            assert refused.status == 502
            assert "CERTIFICATE_VERIFY_FAILED" in error_of(refused)
            assert up.seen == []  # the TLS handshake failed before any request was sent
            gate.local_handlers[mcp_relay.PREFIX] = trusting.handle
            accepted = await gate.local(rpc(run, "initialize", INIT), None)
            assert accepted.status == 200
            assert up.seen[-1][2]["authorization"] == f"Bearer {REAL}"
        finally:
            await untrusting.aclose()
            await trusting.aclose()


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("verb", "target", "status", "message"),
    [
        ("POST", "/mcp/run_someoneelse/acme", 404, "no run 'run_someoneelse' for this token"),
        ("POST", "/mcp/{run}/nope", 404, "run {run} has no MCP server 'nope' (it has: acme, gh)"),
        ("POST", "/mcp/{run}", 404, "MCP servers are at /mcp/<run id>/<name>"),
        (
            "GET",
            "/mcp/{run}/acme",
            405,
            "the valetkey MCP relay does not offer a server-sent event stream on GET; "
            "use POST (responses arrive on each POST)",
        ),
        ("PUT", "/mcp/{run}/acme", 405, "PUT is not allowed: use POST or DELETE"),
    ],
)
async def test_bad_requests_are_refused_and_nothing_reaches_the_upstream(
    kernel, gate, registry, relay, upstream, verb, target, status, message
):
    run = await mcp_run(
        kernel,
        gate,
        registry,
        [McpServerSpec("acme", upstream.url, grant="acme"), McpServerSpec("gh", upstream.url)],
    )
    r = rpc(run, "initialize", INIT, verb=verb, target=target.format(run=run.run_id))
    response = await gate.local(r, None)
    assert response.status == status
    assert error_of(response) == message.format(run=run.run_id)
    if status == 405:
        assert header(response, "allow") == "POST, DELETE"
    assert upstream.seen == []


async def test_no_or_a_wrong_run_token_is_401(kernel, gate, registry, relay, upstream):
    run = await mcp_run(kernel, gate, registry, [McpServerSpec("acme", upstream.url, grant="acme")])
    for auth in ([], [("Authorization", "Bearer " + "0" * 64)]):
        r = rpc(run, "initialize", INIT)
        r.headers = [(k, v) for k, v in r.headers if k != "Authorization"] + auth
        response = await gate.local(r, None)
        assert response.status == 401
        assert error_of(response) == "a valetkey run token is required"
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (
            [McpServerSpec("acme", "http://mcp.acme.test/mcp", grant="acme")],
            "mcp server 'acme': its url must be https:// (plain http:// only to a loopback host)",
        ),
        (
            [McpServerSpec("acme", "https://attacker.example/mcp", grant="acme")],
            "mcp server 'acme': attacker.example is not one of grant 'acme''s hosts",
        ),
        (
            [McpServerSpec("gh", "https://mcp.gh.test/mcp", grant="other")],
            "mcp server 'gh': grant 'other' is not among the run's grants",
        ),
        (
            [McpServerSpec("a", "https://a.test/mcp"), McpServerSpec("a", "https://b.test/mcp")],
            "mcp server 'a': names must be unique, non-empty, without '/'",
        ),
        (
            [McpServerSpec("a/b", "https://a.test/mcp")],
            "mcp server 'a/b': names must be unique",
        ),
    ],
)
async def test_bad_mcp_servers_are_refused_when_the_run_registers(
    kernel, gate, registry, relay, servers, message
):
    before = len(registry)
    with pytest.raises(InvalidInput) as info:
        await mcp_run(kernel, gate, registry, servers)
    assert str(info.value).startswith(message)
    assert len(registry) == before


async def test_an_unreachable_upstream_is_502_without_the_token(kernel, gate, registry, relay):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = await mcp_run(
        kernel,
        gate,
        registry,
        [McpServerSpec("acme", f"http://127.0.0.1:{port}/mcp", grant="acme")],
    )
    response = await gate.local(rpc(run, "initialize", INIT), None)
    assert response.status == 502
    assert error_of(response).startswith("MCP server 'acme' could not be reached: ConnectError")
    assert REAL.encode() not in response.body


async def test_a_revoked_grant_is_502_and_nothing_reaches_the_upstream(
    kernel, gate, registry, relay, upstream
):
    run = await mcp_run(kernel, gate, registry, [McpServerSpec("acme", upstream.url, grant="acme")])
    await kernel.broker.revoke("ann", run.resolved.bindings[0].connection_id)
    response = await gate.local(rpc(run, "initialize", INIT), None)
    assert response.status == 502
    assert error_of(response).startswith("valetkey could not add a credential:")
    assert "revoked" in error_of(response)
    assert upstream.seen == []


# ------------------------------------------------------------------ the official client, sockets


async def test_the_official_mcp_client_lists_and_calls_tools_through_the_relay(
    kernel, gate, registry, relay, upstream, front
):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    run = await mcp_run(kernel, gate, registry, [McpServerSpec("acme", upstream.url, grant="acme")])
    async with front() as port:
        url = f"http://127.0.0.1:{port}/mcp/{run.run_id}/acme"
        headers = {"Authorization": f"Bearer {run.token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                tools = await client.list_tools()
                added = await client.call_tool("add", {"a": 20, "b": 22})
                leaked = await client.call_tool("echo_auth", {})
            client_headers = dict(http.headers)
    assert {t.name for t in tools.tools} == {"add", "echo_auth"}
    assert added.content[0].text == "42"
    assert leaked.content[0].text == "Bearer [REDACTED]"
    assert REAL not in json.dumps(client_headers)
    posts = [s for s in upstream.seen if s[0] == "POST"]
    assert len(posts) >= 3
    assert all(s[2]["authorization"] == f"Bearer {REAL}" for s in upstream.seen)
    assert not any(run.token in json.dumps(s) for s in upstream.seen)
    assert not any(s[0] == "GET" for s in upstream.seen)  # GET streams end at the relay (405)
