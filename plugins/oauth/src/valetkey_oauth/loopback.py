"""The loopback redirect receiver of RFC 8252 (OAuth 2.0 for native apps), section 7.3.

A tiny HTTP server on ``127.0.0.1`` (never ``0.0.0.0`` nor ``localhost``) and a random port,
alive for one sign-in:

- only ``GET /callback`` is served; anything else is a 404 (a 405 for other methods there);
- a callback whose ``state`` is missing or does not match the sign-in in progress is *rejected*
  (a 400 page says why) and does not end the wait: a stray or forged request cannot abort or
  hijack the sign-in, and the real callback that follows still completes it;
- the first callback with the right ``state`` wins: ``code`` completes the sign-in,
  ``error`` / ``error_description`` end it with a clear ``Unauthorized``; every later callback
  gets a page saying the sign-in is already over;
- the pages are short, never echo the code, and tell the person to close the tab;
- ``wait(timeout)`` ends with a clear message when nothing usable came back in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from valetkey_hookspecs import Unauthorized

log = logging.getLogger("valetkey.oauth")

HOST = "127.0.0.1"
PATH = "/callback"
_HEAD_LIMIT = 16 * 1024
_READ_TIMEOUT = 10.0


class LoginTimeout(Unauthorized):
    """No usable callback reached the loopback redirect in time."""

    code = "login_timeout"


@dataclass(frozen=True, slots=True, repr=False)
class Callback:
    """A successful authorization response: the code (a secret) and, per RFC 9207, the issuer."""

    code: str
    iss: str | None = None

    def __repr__(self) -> str:
        return f"Callback(code=<redacted>, iss={self.iss!r})"


def _clean(text: str | None, limit: int = 200) -> str:
    """A provider-supplied text made safe for one line of a message."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text or "").strip()[:limit]


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;
color:#222}}h1{{font-size:1.4rem}}</style></head>
<body><h1>{title}</h1><p>{body}</p></body></html>
"""

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _page(title: str, body: str) -> str:
    return _PAGE.format(title=html.escape(title), body=html.escape(body))


class LoopbackReceiver:
    """``async with LoopbackReceiver(name) as rx: rx.expect(state); cb = await rx.wait(300)``."""

    def __init__(
        self,
        provider_name: str = "the provider",
        *,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.provider_name = provider_name
        self.on_reject = on_reject
        #: why each rejected callback was rejected (state mismatch, no state, ...)
        self.rejected: list[str] = []
        self._server: asyncio.Server | None = None
        self._result: asyncio.Future[Callback] | None = None
        self._state: str | None = None
        self._port = 0

    # life cycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Bind ``127.0.0.1`` on a free port; return the redirect URI."""
        loop = asyncio.get_running_loop()
        self._result = loop.create_future()
        self._server = await asyncio.start_server(
            self._handle, host=HOST, port=0, limit=_HEAD_LIMIT, reuse_address=False
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.debug("loopback redirect receiver listening on %s", self.redirect_uri)
        return self.redirect_uri

    async def close(self) -> None:
        """Stop listening (idempotent); a pending ``wait`` is cancelled."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        if self._result is not None and not self._result.done():
            self._result.cancel()

    async def __aenter__(self) -> LoopbackReceiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def redirect_uri(self) -> str:
        if not self._port:
            raise RuntimeError("the loopback receiver is not started")
        return f"http://{HOST}:{self._port}{PATH}"

    # the sign-in ---------------------------------------------------------------------------

    def expect(self, state: str) -> None:
        """The ``state`` of the authorization request the callback must carry."""
        self._state = state

    @property
    def done(self) -> bool:
        return self._result is not None and self._result.done()

    async def wait(self, timeout: float) -> Callback:
        """The callback's code; ``Unauthorized`` for an error callback, ``LoginTimeout`` when
        nothing usable arrives within ``timeout`` seconds."""
        if self._result is None:
            raise RuntimeError("the loopback receiver is not started")
        try:
            return await asyncio.wait_for(asyncio.shield(self._result), timeout)
        except TimeoutError:
            rejected = ""
            if self.rejected:
                n = len(self.rejected)
                rejected = (
                    f"; {n} callback{'s' if n > 1 else ''} that did not belong to this sign-in "
                    f"({self.rejected[-1]}) {'were' if n > 1 else 'was'} rejected"
                )
            raise LoginTimeout(
                f"no sign-in to {self.provider_name} came back to {self.redirect_uri} within "
                f"{timeout:g} s{rejected}: run the command again, or use the device flow "
                "(--device) where no browser can reach this machine"
            ) from None

    # HTTP ----------------------------------------------------------------------------------

    def _reject(self, reason: str) -> tuple[int, str]:
        self.rejected.append(reason)
        log.warning("loopback redirect: rejected a callback (%s)", reason)
        if self.on_reject is not None:
            self.on_reject(
                f"Ignored a sign-in callback that does not belong to this sign-in ({reason}); "
                "still waiting for the right one."
            )
        return 400, _page(
            "This sign-in link is not valid",
            f"It does not belong to the sign-in in progress ({reason}) and was ignored. "
            "Finish signing in from the page the command opened, then close this tab.",
        )

    def _on_callback(self, query: dict[str, list[str]]) -> tuple[int, str]:
        def first(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        name = self.provider_name
        result = self._result
        if result is None or result.done():
            return 200, _page(
                "Sign-in already complete",
                f"This sign-in to {name} is already over. You can close this tab.",
            )
        state = first("state")
        if self._state is None:
            return self._reject("no sign-in is in progress yet")
        if not state:
            return self._reject("the callback has no state parameter")
        if not hmac.compare_digest(state.encode(), self._state.encode()):
            return self._reject("state mismatch")
        error = first("error")
        if error:
            description = _clean(first("error_description"))
            detail = f"{_clean(error, 80)}" + (f": {description}" if description else "")
            result.set_exception(Unauthorized(f"sign-in to {name} was not authorized ({detail})"))
            return 200, _page(
                "Sign-in failed",
                f"{name} did not authorize the sign-in ({detail}). You can close this tab and "
                "go back to the terminal.",
            )
        code = first("code")
        if not code:
            result.set_exception(
                Unauthorized(f"sign-in to {name} failed: the callback carried no code")
            )
            return 400, _page("Sign-in failed", "The callback carried no authorization code.")
        result.set_result(Callback(code=code, iss=first("iss")))
        return 200, _page(
            "Signed in",
            f"You are signed in to {name}. You can close this tab and go back to the terminal.",
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, body = 400, _page("Bad request", "This is not an HTTP request.")
            else:
                method, target = parts[0], parts[1]
                url = urlsplit(target)
                if url.path != PATH:
                    status, body = 404, _page("Not found", "Nothing is served here.")
                elif method != "GET":
                    status, body = 405, _page("Method not allowed", "Only GET is served here.")
                else:
                    status, body = self._on_callback(parse_qs(url.query))
            payload = body.encode()
            extra = "Allow: GET\r\n" if status == 405 else ""
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                    "Content-Type: text/html; charset=utf-8\r\n"
                    f"Content-Length: {len(payload)}\r\n"
                    "Cache-Control: no-store\r\n"
                    "Referrer-Policy: no-referrer\r\n"
                    "X-Content-Type-Options: nosniff\r\n"
                    "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n"
                    f"{extra}Connection: close\r\n\r\n"
                ).encode("latin-1")
                + payload
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
