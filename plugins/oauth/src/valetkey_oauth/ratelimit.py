"""A token bucket per connector, from its ``RateProfile``, shared by everything in one process.

``RateProfile(requests=5, per_seconds=60)`` is a bucket of 5 tokens that refills at 5 per 60 s:
a burst of 5, then one call every 12 s. ``acquire(wait=False)`` takes a token or raises
``RateLimited`` (with ``retry_after``) *before* anything is sent; ``acquire(wait=True)`` reserves
the next token and sleeps until it is due (first come, first served; a cancelled wait gives
its token back).

The state sits behind a ``threading.Lock`` held only for arithmetic, never across an ``await``,
so one bucket serves every event loop and thread of the process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from valetkey_hookspecs import Connector, RateLimited, RateProfile


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``capacity / per_seconds`` per second."""

    def __init__(
        self,
        profile: RateProfile,
        *,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if profile.requests < 1 or profile.per_seconds <= 0:
            raise ValueError(f"unusable rate profile {profile!r}")
        self.profile = profile
        self.label = label
        self._clock = clock
        self._sleep = sleep
        self._capacity = float(profile.requests)
        self._rate = profile.requests / profile.per_seconds
        self._tokens = self._capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"TokenBucket({self.label or 'unnamed'}: {self.profile.requests} per "
            f"{self.profile.per_seconds:g} s)"
        )

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    @property
    def available(self) -> float:
        """Tokens in the bucket now (negative while waiters hold reservations)."""
        with self._lock:
            self._refill()
            return self._tokens

    def try_acquire(self) -> float:
        """Take a token and return 0, or take nothing and return the seconds until one is due."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self._rate

    def _reserve(self) -> float:
        """Take the next token, going into debt if needed; the seconds until it is due."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            return max(0.0, -self._tokens / self._rate)

    def _give_back(self) -> None:
        with self._lock:
            self._refill()
            self._tokens = min(self._capacity, self._tokens + 1.0)

    async def acquire(self, *, wait: bool) -> float:
        """Take one token; return the seconds waited. ``wait=False``: ``RateLimited`` instead of
        waiting (nothing consumed)."""
        if not wait:
            retry_after = self.try_acquire()
            if retry_after > 0:
                raise RateLimited(
                    f"rate limit of {self.label or 'this connector'} reached "
                    f"({self.profile.requests} requests per {self.profile.per_seconds:g} s): "
                    f"nothing was sent; retry in {retry_after:.1f} s",
                    retry_after=retry_after,
                )
            return 0.0
        delay = self._reserve()
        if delay > 0:
            try:
                await self._sleep(delay)
            except BaseException:
                self._give_back()
                raise
        return delay


_buckets: dict[str, TokenBucket] = {}
_registry_lock = threading.Lock()


def bucket_for(connector: Connector) -> TokenBucket | None:
    """The process-wide bucket of ``connector`` (by slug), or None when it has no rate profile.
    A connector whose profile changed gets a fresh bucket."""
    profile = connector.rate
    if profile is None:
        return None
    with _registry_lock:
        bucket = _buckets.get(connector.slug)
        if bucket is None or bucket.profile != profile:
            bucket = TokenBucket(profile, label=connector.slug)
            _buckets[connector.slug] = bucket
        return bucket


async def acquire(connector: Connector, *, wait: bool) -> float:
    """Take a token from ``connector``'s bucket (no-op without a rate profile)."""
    bucket = bucket_for(connector)
    if bucket is None:
        return 0.0
    return await bucket.acquire(wait=wait)


def reset() -> None:
    """Forget every bucket (tests)."""
    with _registry_lock:
        _buckets.clear()
