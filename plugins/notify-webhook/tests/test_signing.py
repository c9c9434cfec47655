"""Receivers' side: verify_signature on real deliveries, and every way it refuses one."""

from __future__ import annotations

import re

import pytest

from valetkey_hookspecs import Notification
from valetkey_notify_webhook import verify_signature as exported
from valetkey_notify_webhook.notifier import WebhookNotifier
from valetkey_notify_webhook.signing import sign, verify_signature

SECRET = "whsec-signing-test-secret-0123456789"

pytestmark = pytest.mark.anyio
MISMATCH = "signature mismatch: wrong secret, or the body or timestamp was altered"


def refused(message):
    """pytest.raises for a ValueError with exactly ``message``."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


@pytest.fixture
async def delivery(receiver, anyio_backend):
    """One real delivery as the receiver got it: (headers, body, timestamp)."""
    notifier = WebhookNotifier(receiver.url, secret=SECRET)
    await notifier.notify(Notification(kind="needs_reauth", message="reconnect", owner="ann"))
    await notifier.aclose()
    [request] = receiver.requests
    return request.headers, request.body, int(request.headers["X-Valetkey-Timestamp"])


async def test_a_real_delivery_verifies(delivery):
    headers, body, timestamp = delivery
    assert verify_signature(SECRET, headers, body) is None
    assert verify_signature(SECRET.encode(), headers, body, now=timestamp + 299) is None
    assert exported is verify_signature


async def test_header_names_are_case_insensitive(delivery):
    headers, body, _ = delivery
    verify_signature(SECRET, {k.lower(): v for k, v in headers.items()}, body)
    verify_signature(SECRET, {k.upper(): v for k, v in headers.items()}, body)


async def test_a_tampered_body_is_refused(delivery):
    headers, body, _ = delivery
    tampered = body.replace(b'"owner":"ann"', b'"owner":"eve"')
    assert tampered != body
    with refused(MISMATCH):
        verify_signature(SECRET, headers, tampered)


async def test_a_wrong_secret_is_refused(delivery):
    headers, body, _ = delivery
    with refused(MISMATCH):
        verify_signature("not-the-secret", headers, body)


async def test_a_moved_timestamp_is_refused(delivery):
    headers, body, timestamp = delivery
    moved = {**headers, "X-Valetkey-Timestamp": str(timestamp + 60)}
    with refused(MISMATCH):
        verify_signature(SECRET, moved, body)


async def test_a_stale_delivery_is_refused(delivery):
    headers, body, timestamp = delivery
    with refused("stale timestamp: signed 301 s ago, tolerance is 300 s"):
        verify_signature(SECRET, headers, body, now=timestamp + 301)
    with refused("stale timestamp: signed 900 s ago, tolerance is 60 s"):
        verify_signature(SECRET, headers, body, tolerance=60, now=timestamp + 900)
    verify_signature(SECRET, headers, body, tolerance=None, now=timestamp + 10**6)


async def test_a_timestamp_from_the_future_is_refused(delivery):
    headers, body, timestamp = delivery
    with refused("timestamp is 400 s in the future, tolerance is 300 s"):
        verify_signature(SECRET, headers, body, now=timestamp - 400)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("X-Valetkey-Signature", "missing X-Valetkey-Signature header"),
        ("X-Valetkey-Timestamp", "missing X-Valetkey-Timestamp header"),
    ],
)
async def test_missing_headers_are_named(delivery, drop, message):
    headers, body, _ = delivery
    without = {k: v for k, v in headers.items() if k.lower() != drop.lower()}
    with refused(message):
        verify_signature(SECRET, without, body)


def test_malformed_headers_and_an_empty_secret():
    body = b"{}"
    good = {"X-Valetkey-Timestamp": "1700000000", "X-Valetkey-Signature": sign(SECRET, 1, body)}
    with refused("X-Valetkey-Timestamp is not a whole number of seconds"):
        verify_signature(SECRET, {**good, "X-Valetkey-Timestamp": "yesterday"}, body)
    with refused("X-Valetkey-Signature has no sha256=<hex> value"):
        verify_signature(SECRET, {**good, "X-Valetkey-Signature": "md5=abc"}, body)
    with refused("cannot verify: the secret is empty"):
        verify_signature("", good, body)


def test_the_signature_format_and_several_values_during_a_rotation():
    body = b'{"id":"x"}'
    # HMAC-SHA256(key="k", "1700000000." + body), computed independently
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == f"sha256={expected}"
    rotating = {
        "X-Valetkey-Timestamp": "1700000000",
        "X-Valetkey-Signature": f"{sign('old', 1700000000, body)}, {sign('k', 1700000000, body)}",
    }
    verify_signature("k", rotating, body, now=1700000000)
    verify_signature("old", rotating, body, now=1700000000)
    with refused(MISMATCH):
        verify_signature("other", rotating, body, now=1700000000)
