"""Webhook signatures: how the sender signs a delivery and how a receiver checks it.

The signature is ``sha256=`` followed by the hex HMAC-SHA256, keyed with the shared secret, over
the bytes ``f"{timestamp}."`` followed by the exact request body. ``timestamp`` is the value of the
``X-Valetkey-Timestamp`` header (Unix seconds); signing it makes a captured request useless once
it is older than the receiver's tolerance (replay protection).

Standard library only, so a receiver can use :func:`verify_signature` without anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Valetkey-Signature"
TIMESTAMP_HEADER = "X-Valetkey-Timestamp"
SCHEME = "sha256="


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Valetkey-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SCHEME + mac.hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, whatever the case of its name in ``headers``."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, candidate in headers.items():
        if key.lower() == wanted:
            return candidate
    return None


def verify_signature(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float | None = 300,
    *,
    now: float | None = None,
) -> None:
    """Check that a delivery was signed with ``secret`` and is fresh; return None if so.

    :param secret: the shared secret (the value of ``[plugin.notify-webhook].secret``).
    :param headers: the request's headers; any mapping, looked up case-insensitively.
    :param body: the raw request body, exactly as received (not re-serialised JSON).
    :param tolerance: how many seconds the ``X-Valetkey-Timestamp`` may differ from ``now``;
        ``None`` turns the freshness check off (not recommended).
    :param now: the current Unix time (default: ``time.time()``), for tests.
    :raises ValueError: with the reason: a missing or malformed header, a signature that does
        not match (wrong secret, altered body or timestamp), or a timestamp outside the tolerance.
    """
    key = _key(secret)
    if not key:
        raise ValueError("cannot verify: the secret is empty")
    raw_signature = _header(headers, SIGNATURE_HEADER)
    if not raw_signature:
        raise ValueError(f"missing {SIGNATURE_HEADER} header")
    raw_timestamp = _header(headers, TIMESTAMP_HEADER)
    if not raw_timestamp:
        raise ValueError(f"missing {TIMESTAMP_HEADER} header")
    try:
        timestamp = int(raw_timestamp.strip())
    except ValueError:
        raise ValueError(f"{TIMESTAMP_HEADER} is not a whole number of seconds") from None
    # Several comma-separated values are accepted, so a sender may sign with two secrets while
    # receivers rotate from one to the other.
    candidates = [
        part.strip()[len(SCHEME) :]
        for part in raw_signature.split(",")
        if part.strip().startswith(SCHEME)
    ]
    if not candidates:
        raise ValueError(f"{SIGNATURE_HEADER} has no {SCHEME}<hex> value")
    expected = sign(key, timestamp, body)[len(SCHEME) :]
    # compare every candidate (constant time each) so timing says nothing about which one matched
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise ValueError("signature mismatch: wrong secret, or the body or timestamp was altered")
    if tolerance is not None:
        age = (time.time() if now is None else now) - timestamp
        if age > tolerance:
            raise ValueError(
                f"stale timestamp: signed {age:.0f} s ago, tolerance is {tolerance:g} s"
            )
        if -age > tolerance:
            raise ValueError(
                f"timestamp is {-age:.0f} s in the future, tolerance is {tolerance:g} s"
            )


__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "verify_signature"]
