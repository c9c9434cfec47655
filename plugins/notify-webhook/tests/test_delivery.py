"""The webhook notifier against a real HTTP receiver on 127.0.0.1: the NotifierContract,
payload and headers, retries and backoff, Retry-After, refusals, filters, and secrecy."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from valetkey_hookspecs import Notification, PluginError
from valetkey_hookspecs.testing import NotifierContract
from valetkey_notify_webhook.notifier import DeliveryError, WebhookNotifier, parse_retry_after
from valetkey_notify_webhook.signing import verify_signature

SECRET = "whsec-test-0123456789abcdef-DO-NOT-LOG"

pytestmark = pytest.mark.anyio


def reauth(**changes):
    fields = {
        "kind": "needs_reauth",
        "message": "reconnect github",
        "owner": "ann",
        "connection_id": "conn_1",
        "connector": "github",
        "data": {"connect_url": "https://valetkey.test/connect/abc", "user_code": "WDJB-MJHT"},
        "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    return Notification(**{**fields, **changes})


@pytest.fixture
async def make_notifier(anyio_backend):
    """Build notifiers (tiny backoff by default) and close them after the test."""
    made: list[WebhookNotifier] = []

    def make(url, **options):
        options.setdefault("secret", SECRET)
        options.setdefault("backoff", 0.01)
        notifier = WebhookNotifier(url, **options)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        await notifier.aclose()


def attempts_of(caplog):
    return [r for r in caplog.records if hasattr(r, "attempt")]


class TestWebhookNotifier(NotifierContract):
    @pytest.fixture
    async def notifier(self, receiver, anyio_backend):
        # naming anyio_backend lets anyio run this async fixture for the contract's sync test too
        notifier = WebhookNotifier(receiver.url, secret=SECRET, backoff=0.01)
        yield notifier
        await notifier.aclose()

    @pytest.fixture
    def delivered(self, receiver):
        return receiver.bodies


# --------------------------------------------------------------------------- what is sent


async def test_payload_and_headers(receiver, make_notifier):
    notifier = make_notifier(receiver.url, headers={"Authorization": "Bearer hook-auth-value"})
    await notifier.notify(reauth())

    [request] = receiver.requests
    body = request.json()
    assert request.path == "/hooks/valetkey"
    assert body == {
        "id": body["id"],
        "kind": "needs_reauth",
        "message": "reconnect github",
        "owner": "ann",
        "connection_id": "conn_1",
        "connector": "github",
        "data": {"connect_url": "https://valetkey.test/connect/abc", "user_code": "WDJB-MJHT"},
        "at": "2026-01-02T03:04:05+00:00",
    }
    assert str(uuid.UUID(body["id"])) == body["id"]
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "valetkey-notify-webhook/0.1.0"
    assert headers["x-valetkey-event"] == "needs_reauth"
    assert headers["x-valetkey-delivery"] == body["id"]
    assert headers["x-valetkey-attempt"] == "1"
    assert headers["authorization"] == "Bearer hook-auth-value"
    assert headers["x-valetkey-signature"].startswith("sha256=")
    assert len(headers["x-valetkey-signature"]) == len("sha256=") + 64
    timestamp = int(headers["x-valetkey-timestamp"])
    assert abs(timestamp - datetime.now(UTC).timestamp()) < 60
    verify_signature(SECRET, request.headers, request.body)


async def test_at_is_utc_and_odd_data_values_still_serialise(receiver, make_notifier):
    notifier = make_notifier(receiver.url)
    cet = timezone(timedelta(hours=1))
    await notifier.notify(
        reauth(
            at=datetime(2026, 1, 2, 4, 4, 5, tzinfo=cet),
            data={"when": datetime(2026, 1, 1, tzinfo=UTC), "tags": {"b"}, "n": 1, "ü": "ok"},
        )
    )
    body = receiver.requests[0].json()
    assert body["at"] == "2026-01-02T03:04:05+00:00"
    assert body["data"] == {"when": "2026-01-01T00:00:00+00:00", "tags": ["b"], "n": 1, "ü": "ok"}


async def test_without_a_secret_no_signature_header_is_sent(receiver, make_notifier):
    await make_notifier(receiver.url, secret="").notify(reauth())
    headers = {k.lower() for k in receiver.requests[0].headers}
    assert "x-valetkey-signature" not in headers
    assert "x-valetkey-timestamp" in headers


async def test_events_filter_skips_other_kinds_without_a_request(receiver, make_notifier):
    notifier = make_notifier(receiver.url, events=["needs_reauth"])
    await notifier.notify(reauth(kind="refreshed", message="refreshed github"))
    await notifier.notify(reauth(kind="refresh_failed", message="still failing"))
    assert receiver.requests == []
    await notifier.notify(reauth())
    assert [b["kind"] for b in receiver.bodies()] == ["needs_reauth"]


async def test_an_empty_url_disables_the_notifier():
    notifier = WebhookNotifier("")
    assert not notifier.enabled
    await notifier.notify(reauth())  # no URL, no client, no error
    assert notifier._client is None
    assert "disabled" in repr(notifier)


async def test_the_client_is_reused_and_aclose_is_idempotent(receiver, make_notifier):
    notifier = make_notifier(receiver.url)
    await notifier.notify(reauth())
    client = notifier._client
    await notifier.notify(reauth())
    assert notifier._client is client
    await notifier.aclose()
    await notifier.aclose()
    await notifier.notify(reauth())  # a new client after aclose
    assert len(receiver.requests) == 3


# --------------------------------------------------------------------------- retries


async def test_503_twice_then_200_is_three_attempts_of_one_delivery(
    receiver, make_notifier, webhook_log
):
    receiver.answer(503, 503)
    await make_notifier(receiver.url, backoff=0.01).notify(reauth())

    assert len(receiver.requests) == 3
    ids = {r.headers["X-Valetkey-Delivery"] for r in receiver.requests}
    assert len(ids) == 1
    assert {r.body for r in receiver.requests} == {receiver.requests[0].body}
    assert [r.headers["X-Valetkey-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    for r in receiver.requests:  # each attempt is signed for its own timestamp
        verify_signature(SECRET, r.headers, r.body)
    arrivals = [r.at for r in receiver.requests]
    assert arrivals == sorted(arrivals)

    records = attempts_of(webhook_log)
    assert [(r.attempt, r.status) for r in records] == [(1, 503), (2, 503), (3, 200)]
    delays = [r.delay for r in records if hasattr(r, "delay")]
    assert len(delays) == 2
    assert 0.01 <= delays[0] < delays[1]  # doubling (jitter never overlaps two steps)
    assert "HTTP 503 Service Unavailable on attempt 1 of 5, retrying in" in records[0].message
    assert records[2].levelname == "INFO"
    assert {r.delivery for r in records} == ids


async def test_delays_double_and_stop_at_max_backoff(receiver, make_notifier, webhook_log):
    receiver.answer(500, 500, 500, 500)
    await make_notifier(receiver.url, backoff=0.004, max_backoff=0.02).notify(reauth())
    delays = [r.delay for r in attempts_of(webhook_log) if hasattr(r, "delay")]
    assert len(delays) == 4
    assert delays[0] < delays[1] < delays[2]
    assert delays[3] == 0.02
    assert max(delays) <= 0.02


async def test_429_retry_after_is_honoured(receiver, make_notifier, webhook_log):
    receiver.answer_with(429, {"Retry-After": "0.2"})
    await make_notifier(receiver.url, backoff=0.001).notify(reauth())
    assert len(receiver.requests) == 2
    [record] = [r for r in attempts_of(webhook_log) if hasattr(r, "delay")]
    assert record.delay == 0.2
    assert "HTTP 429 Too Many Requests" in record.message
    assert receiver.requests[1].at - receiver.requests[0].at >= 0.19


async def test_retry_after_is_capped_at_max_backoff(receiver, make_notifier, webhook_log):
    receiver.answer_with(503, {"Retry-After": "3600"})
    await make_notifier(receiver.url, max_backoff=0.05).notify(reauth())
    assert len(receiver.requests) == 2
    [record] = [r for r in attempts_of(webhook_log) if hasattr(r, "delay")]
    assert record.delay == 0.05


def test_retry_after_forms():
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


async def test_timeout_is_retried(receiver, make_notifier, webhook_log):
    receiver.answer_with(200, sleep=0.5)
    await make_notifier(receiver.url, timeout=0.1).notify(reauth())
    assert len(receiver.requests) == 2
    first = attempts_of(webhook_log)[0]
    assert "no answer within 0.1 s on attempt 1 of 5" in first.message
    assert first.status is None


async def test_400_is_not_retried_and_the_error_names_the_status(
    receiver, make_notifier, webhook_log
):
    receiver.answer(400)
    with pytest.raises(DeliveryError) as caught:
        await make_notifier(receiver.url).notify(reauth())
    assert len(receiver.requests) == 1
    error = caught.value
    assert isinstance(error, PluginError)
    assert (error.status, error.attempts) == (400, 1)
    delivery = receiver.requests[0].headers["X-Valetkey-Delivery"]
    assert str(error) == (
        f"webhook delivery {delivery} (needs_reauth) to 127.0.0.1:{receiver.port} "
        "was refused: HTTP 400 Bad Request"
    )
    [record] = attempts_of(webhook_log)
    assert "HTTP 400 Bad Request on attempt 1, not retried" in record.message


async def test_a_redirect_is_not_followed(receiver, make_notifier):
    receiver.answer_with(302, {"Location": "http://127.0.0.1:1/elsewhere"})
    with pytest.raises(DeliveryError, match=r"HTTP 302 Found \(redirects are not followed\)"):
        await make_notifier(receiver.url).notify(reauth())
    assert len(receiver.requests) == 1


async def test_5xx_until_the_last_attempt_raises(receiver, make_notifier):
    receiver.answer(502, 502, 502)
    with pytest.raises(DeliveryError, match=r"failed after 3 attempts: HTTP 502 Bad Gateway$"):
        await make_notifier(receiver.url, max_attempts=3).notify(reauth())
    assert len(receiver.requests) == 3


async def test_connection_refused_makes_max_attempts_then_raises(
    refused_url, make_notifier, webhook_log
):
    with pytest.raises(DeliveryError) as caught:
        await make_notifier(refused_url, max_attempts=3, backoff=0.001).notify(reauth())
    assert caught.value.attempts == 3
    assert caught.value.status is None
    assert "failed after 3 attempts: ConnectError" in str(caught.value)
    records = attempts_of(webhook_log)
    assert [r.attempt for r in records] == [1, 2, 3]
    assert "giving up" in records[-1].message


async def test_a_single_attempt_says_so(refused_url, make_notifier):
    with pytest.raises(DeliveryError, match="failed after 1 attempt: "):
        await make_notifier(refused_url, max_attempts=1).notify(reauth())


# --------------------------------------------------------------------------- secrecy


async def test_no_secret_signature_or_url_path_in_logs_or_errors(
    receiver, refused_url, make_notifier, webhook_log
):
    webhook_log.set_level(logging.DEBUG)  # every logger: httpx and httpcore too
    hidden_path = "/hooks/T0001/B0002/path-token-XYZ"
    url = receiver.url.replace("/hooks/valetkey", hidden_path) + "?sig=query-token-ABC"
    extra = {"Authorization": "Bearer header-token-QRS"}
    errors: list[str] = []

    receiver.answer(503, 200)
    await make_notifier(url, headers=extra).notify(reauth())
    receiver.answer(401)
    with pytest.raises(DeliveryError) as refused:
        await make_notifier(url, headers=extra).notify(reauth())
    errors += [str(refused.value), repr(refused.value)]
    with pytest.raises(DeliveryError) as unreachable:
        await make_notifier(refused_url + "/path-token-XYZ", headers=extra, max_attempts=2).notify(
            reauth()
        )
    errors += [str(unreachable.value), repr(unreachable.value)]
    errors.append(repr(make_notifier(url, headers=extra)))

    assert receiver.requests[0].path == hidden_path + "?sig=query-token-ABC"
    signatures = [r.headers["X-Valetkey-Signature"] for r in receiver.requests]
    ours = [r.getMessage() for r in webhook_log.records if r.name.startswith("valetkey")]
    everything = [r.getMessage() for r in webhook_log.records]
    assert len(ours) >= 5
    assert any(r.name.startswith("httpcore") for r in webhook_log.records)
    # the secret, the signatures and header values appear nowhere, not even in httpx's logs
    for text in [*errors, *everything, webhook_log.text]:
        for hidden in (SECRET, "header-token-QRS"):
            assert hidden not in text
        for signature in signatures:
            assert signature.removeprefix("sha256=") not in text
    # the URL's path and query stay out of our logs and errors (httpx's own INFO line, off by
    # default in valetkey, does show the URL)
    for text in [*errors, *ours]:
        for hidden in ("path-token-XYZ", "query-token-ABC"):
            assert hidden not in text


def test_importing_the_plugin_does_not_import_httpx():
    code = (
        "import sys, valetkey_notify_webhook; "
        "print(sorted(m for m in ('httpx', 'anyio', 'httpcore') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
