"""Join tokens: the one-time secrets a spoke enrolls with at a hub.

A token is 32 random bytes (URL-safe base64, prefixed ``vkjoin_`` so it is recognisable in a
paste and by redaction); the store keeps only its SHA-256 (``JoinToken.token_hash``), with an
expiry (a TTL > 0 is required) and, once used, when and by whom. The plaintext exists only in the
:class:`MintedJoinToken` returned to whoever asked for it (``valetkey spoke token create``, the
admin UI) — never in a record, a log line or an error.

Shared by the CLI (hub/spoke) and the admin UI: both mint, list and revoke through
``kernel.store.spokes``; enrollment consumes with :func:`consume_join_token`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from valetkey_hookspecs import InvalidInput, JoinToken, Store, utcnow
from valetkey_hookspecs.redaction import register_secret

#: random bytes in a join token
JOIN_TOKEN_BYTES = 32
#: every join token starts with this
JOIN_TOKEN_PREFIX = "vkjoin_"  # noqa: S105 (a prefix, not a secret)
#: the longest TTL a join token may have
MAX_TTL = timedelta(days=30)

_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def hash_join_token(token: str) -> str:
    """What the store keeps of a join token (hex SHA-256 of the whole token string)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def parse_ttl(text: str) -> timedelta:
    """``"1h"``, ``"30m"``, ``"45s"``, ``"2d"`` or plain seconds; ``InvalidInput`` unless
    0 < TTL <= 30 days."""
    m = _TTL.match(text or "")
    if m is None:
        raise InvalidInput(f"ttl {text!r}: give a duration like 15m, 1h or 2d")
    ttl = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    check_ttl(ttl)
    return ttl


def check_ttl(ttl: timedelta) -> None:
    """``InvalidInput`` unless 0 < ``ttl`` <= :data:`MAX_TTL`."""
    if ttl <= timedelta(0):
        raise InvalidInput("ttl: a join token needs a TTL greater than zero")
    if ttl > MAX_TTL:
        raise InvalidInput("ttl: at most 30 days")


@dataclass(frozen=True)
class MintedJoinToken:
    """A new join token: the stored record and the plaintext, shown once (``repr`` hides it)."""

    record: JoinToken
    token: str = field(repr=False)


async def create_join_token(
    store: Store, ttl: timedelta, *, now: datetime | None = None
) -> MintedJoinToken:
    """Mint a one-time join token valid for ``ttl`` and store its hash."""
    check_ttl(ttl)
    now = now or utcnow()
    token = JOIN_TOKEN_PREFIX + secrets.token_urlsafe(JOIN_TOKEN_BYTES)
    register_secret(token)
    record = JoinToken(
        id="jt_" + secrets.token_hex(8),
        token_hash=hash_join_token(token),
        expires_at=now + ttl,
        created_at=now,
    )
    await store.spokes.add_join_token(record)
    return MintedJoinToken(record=record, token=token)


async def consume_join_token(store: Store, token: str, used_by: str) -> JoinToken:
    """Use a join token once (``NotFound`` when unknown, used or expired)."""
    return await store.spokes.consume_join_token(hash_join_token(token), utcnow(), used_by)


async def revoke_join_token(store: Store, token_id: str) -> None:
    """Delete a join token by id (``NotFound`` when missing)."""
    await store.spokes.revoke_join_token(token_id)


def join_token_state(token: JoinToken, now: datetime | None = None) -> str:
    """``used``, ``expired`` or ``valid``."""
    if token.used_at is not None:
        return "used"
    if token.expires_at <= (now or utcnow()):
        return "expired"
    return "valid"


__all__ = [
    "JOIN_TOKEN_BYTES",
    "JOIN_TOKEN_PREFIX",
    "MAX_TTL",
    "MintedJoinToken",
    "check_ttl",
    "consume_join_token",
    "create_join_token",
    "hash_join_token",
    "join_token_state",
    "parse_ttl",
    "revoke_join_token",
]
