"""The ``aws`` grant's ``/_aws/credentials`` endpoint against moto's real STS server: the
container-credentials format, the per-run cache and its single flight, refresh before expiry,
every refusal (with nothing sent to STS), and botocore's own container credential provider over
real sockets. The long-lived keys never appear in an answer or a log."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from valetkey.kernel import load
from valetkey.policy import parse_policy
from valetkey_hookspecs import AuthSpec, AuthType, Connector, Injection, Secret, hookimpl
from valetkey_proxy import aws as aws_module
from valetkey_proxy.aws import AwsCredentials
from valetkey_proxy.config import ProxyConfig
from valetkey_proxy.exchange import Request, Response
from valetkey_proxy.gate import Gate
from valetkey_proxy.runs import AwsSpec, Registry, RunSpec

pytestmark = pytest.mark.anyio

ACCESS_KEY = "AKIAVALETKEYTEST0001"
SECRET_KEY = "valetkey/long-lived+secret-access-key-0001"
ROLE = "arn:aws:iam::123456789012:role/agent"


class Catalog:
    """One injecting connector besides the built-in catalog's ``aws``."""

    @hookimpl
    def valetkey_register_connectors(self, register):
        register(
            Connector(
                slug="acme",
                name="Acme",
                auth=AuthSpec(type=AuthType.API_KEY),
                injection=Injection(hosts=("api.acme.test",), env_var="ACME_TOKEN"),
            )
        )


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
async def kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    doc = {
        "autoload": False,
        "enable": [
            "store-sqlite",
            "secrets-keyring",
            "sealer-local",
            "broker",
            "connectors",
            "catalog",
        ],
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


class Counting(AwsCredentials):
    """Counts STS calls (each is a real AssumeRole against moto)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sts_calls = 0

    def _assume_role(self, *args, **kwargs):
        self.sts_calls += 1
        return super()._assume_role(*args, **kwargs)


@pytest.fixture
def aws(kernel, gate, moto_endpoint):
    credentials = Counting(kernel, sts_endpoint=moto_endpoint)
    gate.local_handlers[aws_module.PREFIX] = credentials.handle
    return credentials


async def connect(kernel, slug, owner="ann", **secret):
    conn = await kernel.broker.create_connection(owner, slug)
    await kernel.broker.store_secret(owner, conn.id, Secret(**secret))
    return conn


async def aws_run(kernel, gate, registry, **spec):
    conn = await connect(kernel, "aws", api_key=ACCESS_KEY, api_secret=SECRET_KEY)
    aws_spec = AwsSpec(role_arn=ROLE, **({"session_duration": 900} | spec))
    run = await gate.prepare(RunSpec(owner="ann", grants=["aws"], aws=aws_spec))
    registry.add(run)
    return run, conn


def get(token=None, target="/_aws/credentials", method="GET", headers=()):
    h = list(headers)
    if token is not None:
        h.append(("Authorization", token))
    return Request(method, "http", "127.0.0.1", 8080, target, h)


def error_of(response: Response) -> str:
    return json.loads(response.body)["error"]


def assert_no_long_lived_key(*texts):
    for text in texts:
        text = text.decode() if isinstance(text, bytes) else str(text)
        assert ACCESS_KEY not in text and SECRET_KEY not in text


def assert_logs_hold_no_key(caplog):
    """The secret access key never appears in a log line, whatever the level. botocore's own
    DEBUG lines show the request's SigV4 ``Authorization`` header, which names the access key
    id (an identifier AWS itself logs, not a secret); at INFO and above it appears nowhere."""
    assert SECRET_KEY not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= 20 and ACCESS_KEY in r.getMessage()]


# ------------------------------------------------------------------ the endpoint


async def test_serves_assumed_role_credentials_in_the_container_format(kernel, gate, registry, aws):
    run, _ = await aws_run(kernel, gate, registry, external_id="ext-1")
    response = await gate.local(get(run.token), None)
    assert response is not None and response.status == 200
    assert ("Content-Type", "application/json") in response.headers
    assert ("Cache-Control", "no-store") in response.headers
    doc = json.loads(response.body)
    assert set(doc) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "RoleArn"}
    assert doc["AccessKeyId"].startswith("ASIA") and doc["SecretAccessKey"] and doc["Token"]
    assert doc["RoleArn"] == ROLE
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["Expiration"])
    expires = datetime.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 800 < (expires - datetime.now(UTC)).total_seconds() <= 901  # session_duration 900
    assert_no_long_lived_key(response.body)
    # cached: the same credentials, no second STS call; Bearer and Basic proxy auth work too
    again = await gate.local(get(f"Bearer {run.token}"), None)
    basic = "Basic " + base64.b64encode(f"valetkey:{run.token}".encode()).decode()
    third = await gate.local(get(), basic)
    assert again.body == response.body == third.body
    assert aws.sts_calls == 1


async def test_concurrent_callers_share_one_sts_call(kernel, gate, registry, aws):
    run, _ = await aws_run(kernel, gate, registry)
    responses = await asyncio.gather(*(gate.local(get(run.token), None) for _ in range(10)))
    assert {r.status for r in responses} == {200}
    assert len({r.body for r in responses}) == 1
    assert aws.sts_calls == 1


async def test_credentials_are_refetched_five_minutes_before_they_expire(
    kernel, gate, registry, aws, monkeypatch
):
    run, _ = await aws_run(kernel, gate, registry)
    first = json.loads((await gate.local(get(run.token), None)).body)
    real_monotonic = aws_module.time.monotonic
    # 900 s credentials: still fresh 9 minutes later, refreshed after 10 (5 minutes before expiry)
    monkeypatch.setattr(aws_module.time, "monotonic", lambda: real_monotonic() + 540)
    assert json.loads((await gate.local(get(run.token), None)).body) == first
    assert aws.sts_calls == 1
    monkeypatch.setattr(aws_module.time, "monotonic", lambda: real_monotonic() + 601)
    second = json.loads((await gate.local(get(run.token), None)).body)
    assert aws.sts_calls == 2 and second["AccessKeyId"] != first["AccessKeyId"]


async def test_each_run_gets_its_own_session_and_forget_drops_the_cache(
    kernel, gate, registry, aws
):
    run, _ = await aws_run(kernel, gate, registry)
    other = await gate.prepare(
        RunSpec(owner="ann", grants=[run.resolved.aws_connection_id], aws=run.spec.aws)
    )
    registry.add(other)
    a = json.loads((await gate.local(get(run.token), None)).body)
    b = json.loads((await gate.local(get(other.token), None)).body)
    assert a["AccessKeyId"] != b["AccessKeyId"] and aws.sts_calls == 2
    aws.forget(run)
    await gate.local(get(run.token), None)
    await gate.local(get(other.token), None)
    assert aws.sts_calls == 3


# ------------------------------------------------------------------ refusals


async def test_a_run_without_an_aws_role_gets_404_and_sts_is_not_called(
    kernel, gate, registry, aws
):
    await connect(kernel, "acme", api_key="acme-key-123456")
    run = await gate.prepare(RunSpec(owner="ann", grants=["acme"]))
    registry.add(run)
    response = await gate.local(get(run.token), None)
    assert response.status == 404
    assert error_of(response) == (
        f"run {run.run_id} has no aws grant: register it with an aws grant and a role "
        "(--grant aws --aws-role ARN)"
    )
    assert aws.sts_calls == 0


@pytest.mark.parametrize(
    ("method", "target", "status", "message"),
    [
        ("POST", "/_aws/credentials", 405, "POST is not allowed here: use GET"),
        ("PUT", "/_aws/credentials", 405, "PUT is not allowed here: use GET"),
        ("GET", "/_aws/other", 404, "no such endpoint: /_aws/other"),
    ],
)
async def test_wrong_method_or_path_is_refused_without_calling_sts(
    kernel, gate, registry, aws, method, target, status, message
):
    run, _ = await aws_run(kernel, gate, registry)
    response = await gate.local(get(run.token, target=target, method=method), None)
    assert response.status == status and error_of(response).startswith(message)
    if status == 405:
        assert ("Allow", "GET, HEAD") in response.headers
    assert aws.sts_calls == 0


async def test_no_or_an_unknown_token_is_401_and_sts_is_not_called(kernel, gate, registry, aws):
    await aws_run(kernel, gate, registry)
    for token in (None, "0" * 64, "Bearer nope"):
        response = await gate.local(get(token), None)
        assert response.status == 401
        assert error_of(response) == "a valetkey run token is required"
    assert aws.sts_calls == 0


async def test_an_sts_refusal_is_502_with_its_code_and_never_the_keys(
    kernel, gate, registry, aws, monkeypatch, caplog
):
    import moto.settings

    run, _ = await aws_run(kernel, gate, registry)
    # moto checks signatures against its IAM users once authentication is on: ours is unknown
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with caplog.at_level("DEBUG"):
        response = await gate.local(get(run.token), None)
    assert response.status == 502
    assert error_of(response) == (
        "AWS STS AssumeRole failed: InvalidClientTokenId: "
        "The security token included in the request is invalid."
    )
    assert_no_long_lived_key(response.body)
    assert_logs_hold_no_key(caplog)
    # a failure is not cached: once STS accepts the key again, the run gets credentials
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    assert (await gate.local(get(run.token), None)).status == 200


async def test_an_unreachable_sts_is_502_naming_the_failure(kernel, gate, registry, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    credentials = AwsCredentials(kernel, sts_endpoint=f"http://127.0.0.1:{port}", timeout=2)
    gate.local_handlers[aws_module.PREFIX] = credentials.handle
    run, _ = await aws_run(kernel, gate, registry)
    with caplog.at_level("DEBUG"):
        response = await gate.local(get(run.token), None)
    assert response.status == 502
    assert error_of(response).startswith(
        "AWS STS AssumeRole failed: EndpointConnectionError: "
        f'Could not connect to the endpoint URL: "http://127.0.0.1:{port}/"'
    )
    assert_no_long_lived_key(response.body)
    assert_logs_hold_no_key(caplog)


async def test_a_revoked_grant_or_an_incomplete_key_is_502_without_calling_sts(
    kernel, gate, registry, aws
):
    run, conn = await aws_run(kernel, gate, registry)
    await kernel.broker.store_secret("ann", conn.id, Secret(api_key=ACCESS_KEY))
    response = await gate.local(get(run.token), None)
    assert response.status == 502
    assert error_of(response) == (
        f"AWS STS AssumeRole failed: IncompleteGrant: the aws connection {conn.id} needs an "
        "access key id (api_key) and a secret access key (api_secret)"
    )
    await kernel.broker.revoke("ann", conn.id)
    response = await gate.local(get(run.token), None)
    assert response.status == 502
    assert error_of(response).startswith("valetkey could not use the aws grant:")
    assert "revoked" in error_of(response)
    assert aws.sts_calls == 0


async def test_an_aws_role_without_an_aws_grant_is_refused_at_prepare(kernel, gate):
    from valetkey_hookspecs import InvalidInput

    with pytest.raises(InvalidInput, match="an aws role needs an aws grant"):
        await gate.prepare(RunSpec(owner="ann", aws=AwsSpec(role_arn=ROLE)))


async def test_an_extra_ca_is_added_to_botocores_bundle_for_sts(kernel, tmp_path):
    extra = tmp_path / "extra.pem"
    extra.write_text("-----BEGIN CERTIFICATE-----\nEXTRA\n-----END CERTIFICATE-----\n")
    assert AwsCredentials(kernel)._verify_setting() is True
    credentials = AwsCredentials(kernel, ProxyConfig(extra_ca_file=str(extra)))
    bundle = credentials._verify_setting()
    assert isinstance(bundle, str)
    text = Path(bundle).read_text()
    assert text.count("BEGIN CERTIFICATE") > 10 and text.rstrip().endswith(
        "EXTRA\n-----END CERTIFICATE-----"
    )
    credentials.close()
    assert not Path(bundle).exists()


# ------------------------------------------------------------------ through real sockets


async def test_botocore_container_provider_gets_the_assumed_role(
    kernel, gate, registry, aws, moto_endpoint, front, monkeypatch
):
    import botocore.session

    run, _ = await aws_run(kernel, gate, registry)
    async with front() as port:
        monkeypatch.setenv(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{port}/_aws/credentials"
        )
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", run.token)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)

        def who_am_i():
            session = botocore.session.Session()
            creds = session.get_credentials()
            assert creds is not None and creds.method == "container-role"
            frozen = creds.get_frozen_credentials()
            sts = session.create_client("sts", region_name="us-east-1", endpoint_url=moto_endpoint)
            return frozen, sts.get_caller_identity()

        frozen, identity = await anyio.to_thread.run_sync(who_am_i)
    assert frozen.access_key.startswith("ASIA") and frozen.token
    assert frozen.access_key != ACCESS_KEY and frozen.secret_key != SECRET_KEY
    assert identity["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/agent/valetkey-")
    assert aws.sts_calls == 1
