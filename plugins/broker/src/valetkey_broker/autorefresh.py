"""Auto refresh for calls made with a vended token (PromptVM's ``WithAutoRefresh``, re-designed):
vend (which refreshes when the token is within the lead of expiry), call, and when the call says
the token is no good — ``Unauthorized``, an HTTP 401, or an ``invalid_token`` error — refresh
once and call exactly once more. A second refusal is the caller's answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from valetkey_hookspecs import Secret, Unauthorized

from .broker import Broker

T = TypeVar("T")


def is_unauthorized(error: BaseException) -> bool:
    """True for errors that mean "this token is not accepted"."""
    if isinstance(error, Unauthorized):
        return True
    response: Any = getattr(error, "response", None)  # httpx.HTTPStatusError and the like
    if getattr(response, "status_code", None) == 401:
        return True
    text = str(error).lower()
    return "invalid_token" in text or "token_expired" in text


async def with_auto_refresh(
    broker: Broker,
    owner: str,
    connection_id: str,
    call: Callable[[Secret], Awaitable[T]],
    *,
    actor: str = "cli",
) -> T:
    """``await call(secret)``; on an unauthorized error, refresh and retry exactly once."""
    secret = await broker.vend(owner, connection_id, actor=actor)
    try:
        return await call(secret)
    except Exception as exc:
        if not is_unauthorized(exc) or not secret.refresh_token:
            raise
    fresh = await broker.refresh(owner, connection_id, actor=actor)
    return await call(fresh)
