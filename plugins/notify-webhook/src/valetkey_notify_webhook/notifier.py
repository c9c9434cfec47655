"""The webhook notifier: one signed JSON POST per notification, retried with backoff.

httpx and anyio are imported on the first delivery, never at import time (``valetkey --help``
stays fast). Nothing here logs or raises the secret, the signature, the extra headers or the
URL's path and query (webhook URLs often embed a token): logs and errors name the host only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from valetkey_hookspecs import ConfigError, Notification, PluginError

from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

if TYPE_CHECKING:
    import httpx

PLUGIN = "notify-webhook"
WHERE = f"[plugin.{PLUGIN}]"

EVENT_HEADER = "X-Valetkey-Event"
DELIVERY_HEADER = "X-Valetkey-Delivery"
ATTEMPT_HEADER = "X-Valetkey-Attempt"

#: headers the notifier sets itself; ``headers`` in the config may not override them
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "Content-Type",
        "Content-Length",
        "Host",
        "User-Agent",
        "Transfer-Encoding",
        "Connection",
        EVENT_HEADER,
        DELIVERY_HEADER,
        ATTEMPT_HEADER,
        TIMESTAMP_HEADER,
        SIGNATURE_HEADER,
    )
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE = re.compile(r"^[\x20-\x7e\t]*$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
#: the most of a response body read (then dropped): receivers answer with a few bytes
_MAX_RESPONSE_BYTES = 64 * 1024

log = logging.getLogger("valetkey.notify.webhook")


# --------------------------------------------------------------------------- validation


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> None:
    """``ConfigError`` unless ``url`` is empty (disabled), https, or http to a loopback host.

    Messages show the scheme and host only: a webhook URL's path often is a credential.
    """
    if not url:
        return
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigError(f"{WHERE}.url: must be an https:// URL (got {shown})")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ConfigError(f"{WHERE}.url: the port is not a number from 0 to 65535") from None
    if not host:
        raise ConfigError(f"{WHERE}.url: has no host")
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"{WHERE}.url: plain http:// is only allowed to a loopback host "
            f"(localhost, 127.0.0.1, ::1); use https:// for {host!r}"
        )


def check_settings(
    *,
    events: Iterable[str],
    timeout: float,
    max_attempts: int,
    backoff: float,
    max_backoff: float,
    headers: Mapping[str, str],
) -> None:
    """``ConfigError`` naming the ``[plugin.notify-webhook]`` key that is out of range."""
    for i, kind in enumerate(events):
        if not isinstance(kind, str) or not kind.strip():
            raise ConfigError(f"{WHERE}.events[{i}]: must be a non-empty event kind")
    if not timeout > 0:
        raise ConfigError(f"{WHERE}.timeout: must be greater than 0 seconds (got {timeout!r})")
    if max_attempts < 1:
        raise ConfigError(f"{WHERE}.max_attempts: must be at least 1 (got {max_attempts!r})")
    if not backoff >= 0:
        raise ConfigError(f"{WHERE}.backoff: must be 0 or more seconds (got {backoff!r})")
    if not max_backoff >= backoff:
        raise ConfigError(
            f"{WHERE}.max_backoff: must be at least backoff ({backoff!r}), got {max_backoff!r}"
        )
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ConfigError(f"{WHERE}.headers: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ConfigError(
                f"{WHERE}.headers.{name}: is set by the plugin and cannot be overridden"
            )
        # the value may be a secret (an Authorization header from a $env reference): never shown
        if not isinstance(value, str) or not _HEADER_VALUE.match(value):
            raise ConfigError(
                f"{WHERE}.headers.{name}: the value must be printable ASCII on one line"
            )


# --------------------------------------------------------------------------- payload


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def payload(notification: Notification, delivery_id: str) -> dict[str, Any]:
    """The JSON object POSTed for ``notification``."""
    return {
        "id": delivery_id,
        "kind": notification.kind,
        "message": notification.message,
        "owner": notification.owner,
        "connection_id": notification.connection_id,
        "connector": notification.connector,
        "data": dict(notification.data),
        "at": _utc(notification.at).isoformat(),
    }


def encode(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: these exact bytes are sent and signed."""
    return json.dumps(
        body, default=_json_default, ensure_ascii=False, separators=(",", ":")
    ).encode()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)  # RFC 9110 says whole seconds; a fraction is accepted too
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = _utc(when).timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"valetkey-notify-webhook/{version('valetkey-notify-webhook')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "valetkey-notify-webhook/0"


# --------------------------------------------------------------------------- the notifier


class DeliveryError(PluginError):
    """A webhook delivery failed for good (after its last attempt, or on a 4xx answer)."""

    def __init__(
        self, message: str, *, delivery_id: str, attempts: int, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.delivery_id = delivery_id
        self.attempts = attempts
        self.status = status


class WebhookNotifier:
    """POSTs each notification as signed JSON to ``url``; an empty ``url`` disables it.

    Retries connection errors, timeouts, 5xx and 429 (honouring ``Retry-After`` up to
    ``max_backoff``) with exponential backoff: ``backoff`` before the second attempt, doubling
    each time, plus up to 50 % jitter, capped at ``max_backoff``. Every attempt of a delivery
    carries the same id and body, and a fresh timestamp and signature. Other answers than 2xx
    are not retried. A delivery that fails for good raises :class:`DeliveryError`.
    """

    name = "webhook"

    def __init__(
        self,
        url: str = "",
        *,
        secret: str = "",
        events: Iterable[str] = (),
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        events = tuple(events)
        headers = dict(headers or {})
        check_url(url)
        check_settings(
            events=events,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            headers=headers,
        )
        self._url = url
        self._host = urlsplit(url).netloc.rpartition("@")[2] if url else ""
        self._secret = secret.encode()
        self._events = frozenset(events)
        self._timeout = float(timeout)
        self._max_attempts = max_attempts
        self._backoff = float(backoff)
        self._max_backoff = float(max_backoff)
        self._headers = headers
        self._client: httpx.AsyncClient | None = None
        self._client_loop: object | None = None
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography

    def __repr__(self) -> str:
        state = f"host={self._host!r}" if self._url else "disabled"
        return f"WebhookNotifier({state}, signed={bool(self._secret)})"

    @property
    def enabled(self) -> bool:
        """False when no URL is configured: ``notify`` then sends nothing."""
        return bool(self._url)

    def wants(self, kind: str) -> bool:
        """Whether a notification of ``kind`` is delivered (``events`` empty: every kind)."""
        return self.enabled and (not self._events or kind in self._events)

    async def notify(self, notification: Notification) -> None:
        """Deliver one notification (or nothing, when disabled or filtered out)."""
        if not self.enabled:
            return
        if not self.wants(notification.kind):
            log.debug("webhook: %s is not in events, not sent", notification.kind)
            return
        delivery_id = str(uuid.uuid4())
        await self._deliver(
            delivery_id, notification.kind, encode(payload(notification, delivery_id))
        )

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent; a later ``notify`` opens a new one)."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is _running_loop():
            await client.aclose()

    close = aclose

    # ------------------------------------------------------------------ internals

    def _client_for_this_loop(self) -> httpx.AsyncClient:
        import httpx

        loop = _running_loop()
        if self._client is None or self._client_loop is not loop:
            # connections belong to the event loop they were opened on: a kernel used from
            # several asyncio.run() calls (one per CLI command) gets one client per loop
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                headers={"User-Agent": _user_agent()},
            )
            self._client_loop = loop
        return self._client

    def _attempt_headers(
        self, delivery_id: str, kind: str, attempt: int, body: bytes
    ) -> dict[str, str]:
        timestamp = str(int(time.time()))
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            EVENT_HEADER: kind,
            DELIVERY_HEADER: delivery_id,
            ATTEMPT_HEADER: str(attempt),
            TIMESTAMP_HEADER: timestamp,
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        return headers

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt``."""
        if retry_after is not None:
            return min(retry_after, self._max_backoff)
        base = self._backoff * 2.0 ** (attempt - 1)
        return min(base * self._random.uniform(1.0, 1.5), self._max_backoff)

    async def _attempt(
        self, client: httpx.AsyncClient, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, str, float | None]:
        """One POST: the status, its reason phrase and the ``Retry-After`` delay, if any."""
        import anyio

        with anyio.fail_after(self._timeout):  # the whole attempt, not each phase
            request = client.build_request("POST", self._url, content=body, headers=headers)
            response = await client.send(request, stream=True)
            try:
                await _drain(response)
            finally:
                await response.aclose()
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return response.status_code, response.reason_phrase, retry_after

    async def _deliver(self, delivery_id: str, kind: str, body: bytes) -> None:
        import anyio
        import httpx

        client = self._client_for_this_loop()
        problem = ""
        status: int | None = None
        for attempt in range(1, self._max_attempts + 1):
            headers = self._attempt_headers(delivery_id, kind, attempt, body)
            retry_after: float | None = None
            status = None
            started = time.monotonic()
            try:
                status, reason, retry_after = await self._attempt(client, headers, body)
            except (TimeoutError, httpx.TimeoutException):
                problem = f"no answer within {self._timeout:g} s"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {self._scrub(str(exc)) or 'connection failed'}"
            else:
                extra = {
                    "delivery": delivery_id,
                    "kind": kind,
                    "attempt": attempt,
                    "status": status,
                }
                if 200 <= status < 300:
                    log.info(
                        "webhook delivery %s (%s) to %s: HTTP %d on attempt %d (%.0f ms)",
                        delivery_id,
                        kind,
                        self._host,
                        status,
                        attempt,
                        (time.monotonic() - started) * 1000,
                        extra=extra,
                    )
                    return
                problem = f"HTTP {status} {reason}".rstrip()
                if not (status >= 500 or status == 429):
                    hint = " (redirects are not followed)" if 300 <= status < 400 else ""
                    log.warning(
                        "webhook delivery %s (%s) to %s: %s on attempt %d, not retried%s",
                        delivery_id,
                        kind,
                        self._host,
                        problem,
                        attempt,
                        hint,
                        extra=extra,
                    )
                    raise DeliveryError(
                        f"webhook delivery {delivery_id} ({kind}) to {self._host} was refused: "
                        f"{problem}{hint}",
                        delivery_id=delivery_id,
                        attempts=attempt,
                        status=status,
                    )
            extra = {"delivery": delivery_id, "kind": kind, "attempt": attempt, "status": status}
            if attempt == self._max_attempts:
                log.warning(
                    "webhook delivery %s (%s) to %s: %s on attempt %d of %d, giving up",
                    delivery_id,
                    kind,
                    self._host,
                    problem,
                    attempt,
                    self._max_attempts,
                    extra=extra,
                )
                break
            delay = self._delay(attempt, retry_after)
            log.warning(
                "webhook delivery %s (%s) to %s: %s on attempt %d of %d, retrying in %.3f s",
                delivery_id,
                kind,
                self._host,
                problem,
                attempt,
                self._max_attempts,
                delay,
                extra={**extra, "delay": delay},
            )
            await anyio.sleep(delay)
        attempts = "1 attempt" if self._max_attempts == 1 else f"{self._max_attempts} attempts"
        raise DeliveryError(
            f"webhook delivery {delivery_id} ({kind}) to {self._host} failed after {attempts}: "
            f"{problem}",
            delivery_id=delivery_id,
            attempts=self._max_attempts,
            status=status,
        )

    def _scrub(self, text: str) -> str:
        """``text`` without the URL (whose path or query may be a credential)."""
        return text.replace(self._url, self._host) if self._url else text


async def _drain(response: httpx.Response) -> None:
    """Read (and drop) a small answer so the connection can be reused; stop at a large one."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > _MAX_RESPONSE_BYTES:
            break


def _running_loop() -> object | None:
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # not on asyncio (trio): one client for the notifier's life
        return None


__all__ = ["DeliveryError", "WebhookNotifier", "check_settings", "check_url", "encode", "payload"]
