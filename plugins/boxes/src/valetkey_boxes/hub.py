"""The hub side of clustering: the ``/spoke/connect`` WebSocket endpoint of ``valetkey serve``,
the live spoke connections, and calls routed to them.

- **Enrollment**: a new spoke's first frame carries a one-time join token (``valetkey spoke
  token create``); the hub consumes it atomically, makes the spoke a long-lived credential
  (32 random bytes, only its SHA-256 stored), and sends it back once in the welcome. A used,
  expired, revoked or unknown token is refused (close 4401); a name another spoke has is refused
  (close 4409) and does not burn the token.
- **Reconnection**: later connections say hello with the credential. One live connection per
  spoke: a new one supersedes the old (closed with 4000), whose waiting calls fail at once.
- **Calls**: :meth:`Hub.call` sends a ``call`` frame with a fresh id over the spoke's current
  connection and waits (bounded) for the answer from that connection only. A spoke that is not
  connected is ``RuntimeUnavailable``; a spoke never enrolled is ``NotFound``.
- **Health**: ``last_seen_at`` in the store is updated at connect, every ``heartbeat`` seconds
  while connected, and at disconnect. A spoke deleted meanwhile (admin UI) is disconnected.

Everything here lives in the one ``valetkey serve`` process (a WebSocket is held by the process
that accepted it); sessions of boxes on a disconnected spoke stay in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from valetkey_hookspecs import (
    Conflict,
    InvalidInput,
    KernelAPI,
    NotFound,
    RuntimeUnavailable,
    Spoke,
    ValetkeyError,
    utcnow,
)
from valetkey_hookspecs.redaction import register_secret

from . import fleet_protocol as proto
from .config import BoxesConfig, HubConfig
from .jointokens import consume_join_token

log = logging.getLogger("valetkey.boxes.hub")

#: the first frame (hello or enroll) of a connection that is not authenticated yet
HELLO_MAX_BYTES = 4096


@dataclass(eq=False)
class SpokeLink:
    """One live spoke connection: ``send`` writes a text frame, ``close`` ends it."""

    spoke: Spoke
    runtime: str
    send: Callable[[str], Awaitable[None]]
    close: Callable[[int, str], Awaitable[None]]
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.time)
    closed: bool = False

    @property
    def name(self) -> str:
        """The spoke's name."""
        return self.spoke.name

    def fail_pending(self, why: str) -> None:
        """Fail every waiting call with ``why`` (the spoke is gone)."""
        for call_id, future in list(self.pending.items()):
            if not future.done():
                future.set_exception(RuntimeUnavailable(f"spoke {self.name!r}: {why}"))
            self.pending.pop(call_id, None)


class Hub:
    """The spokes of one ``valetkey serve``: who is connected, and calls to them."""

    def __init__(self, kernel: KernelAPI, config: HubConfig | None = None) -> None:
        self.kernel = kernel
        boxes = kernel.plugin_config("boxes")
        self.config = config or (boxes.hub if isinstance(boxes, BoxesConfig) else HubConfig())
        self.links: dict[str, SpokeLink] = {}
        #: names of enrolled spokes (refreshed from the store by :meth:`enrolled`)
        self.known: set[str] = set()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ queries

    def connected(self, name: str) -> bool:
        """Whether ``name`` has a live connection."""
        return name in self.links

    async def enrolled(self) -> list[Spoke]:
        """Every enrolled spoke (from the store), by name."""
        spokes = await self.kernel.store.spokes.list()
        self.known = {s.name for s in spokes}
        return spokes

    async def names(self) -> list[str]:
        """Names of every enrolled spoke."""
        return [s.name for s in await self.enrolled()]

    async def statuses(self) -> list[dict[str, Any]]:
        """This server (``local``, always connected) then each enrolled spoke: name, connected,
        last seen, runtime and box count (sessions in the store)."""
        sessions = await self.kernel.store.boxes.list()
        counts: dict[str, int] = {}
        for session in sessions:
            key = session.spoke or "local"
            counts[key] = counts.get(key, 0) + 1
        out: list[dict[str, Any]] = [
            {
                "name": "local",
                "connected": True,
                "local": True,
                "last_seen": utcnow().isoformat(),
                "box_count": counts.get("local", 0),
            }
        ]
        for spoke in await self.enrolled():
            link = self.links.get(spoke.name)
            out.append(
                {
                    "name": spoke.name,
                    "connected": link is not None,
                    "last_seen": spoke.last_seen_at.isoformat() if spoke.last_seen_at else None,
                    "enrolled_at": spoke.created_at.isoformat(),
                    "runtime": link.runtime if link else spoke.data.get("runtime"),
                    "box_count": counts.get(spoke.name, 0),
                }
            )
        return out

    def runtime(self, name: str) -> Any:
        """The :class:`~valetkey_boxes.remote_runtime.RemoteRuntime` of spoke ``name``; set as
        ``BoxManager.spoke_runtime``. Its calls fail with ``NotFound`` for a name never
        enrolled and ``RuntimeUnavailable`` while the spoke is not connected."""
        from .remote_runtime import RemoteRuntime

        proto.check_spoke_name(name)
        return RemoteRuntime(self, name)

    # ------------------------------------------------------------------ calls

    async def call(
        self, name: str, method: str, params: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """Ask spoke ``name`` to run ``method``; its result, or the error it raised (as the same
        valetkey error class). ``RuntimeUnavailable`` when it is not connected, drops the
        connection, or does not answer within ``timeout`` (default ``call_timeout``)."""
        if method not in proto.METHODS:
            raise InvalidInput(f"unknown spoke method {method!r}")
        link = self.links.get(name)
        if link is None:
            if name not in self.known and name not in await self.names():
                raise NotFound(f"no spoke named {name!r} is enrolled at this hub")
            raise RuntimeUnavailable(f"spoke {name!r} is not connected to this hub")
        seconds = timeout if timeout is not None else self.config.call_timeout
        call_id = next(self._ids)
        text = proto.encode({"type": "call", "id": call_id, "method": method, "params": params})
        if len(text.encode("utf-8")) > self.config.max_frame_bytes:
            raise InvalidInput(
                f"the {method} request is over the {self.config.max_frame_bytes}-byte frame limit"
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        link.pending[call_id] = future
        try:
            # the send is inside the deadline: a spoke that stops reading cannot hold the call
            async with asyncio.timeout(seconds):
                await link.send(text)
                frame = await future
        except TimeoutError:
            raise RuntimeUnavailable(
                f"spoke {name!r} did not answer {method} within {seconds:g}s"
            ) from None
        except ValetkeyError:
            raise
        except Exception as exc:  # the connection broke while sending
            raise RuntimeUnavailable(
                f"spoke {name!r}: the connection failed ({type(exc).__name__})"
            ) from None
        finally:
            link.pending.pop(call_id, None)
        if frame["type"] == "error":
            raise proto.error_from(name, frame.get("error"))
        return frame.get("result")

    # ------------------------------------------------------------------ connections

    async def attach(self, link: SpokeLink) -> None:
        """Make ``link`` the spoke's connection, superseding (closing) an earlier one."""
        old = self.links.get(link.name)
        self.links[link.name] = link
        self.known.add(link.name)
        if old is not None and old is not link:
            old.closed = True
            old.fail_pending("the spoke reconnected (this connection was superseded)")
            with contextlib.suppress(Exception):
                await old.close(proto.CLOSE_SUPERSEDED, "superseded by a newer connection")
            log.info("spoke %s: a new connection superseded the old one", link.name)

    def detach(self, link: SpokeLink) -> None:
        """Forget ``link`` (if it is still the spoke's connection) and fail its calls."""
        link.closed = True
        if self.links.get(link.name) is link:
            del self.links[link.name]
        link.fail_pending("the spoke disconnected")

    def resolve(self, link: SpokeLink, frame: dict[str, Any]) -> bool:
        """Hand an answer to the call waiting for it on ``link``; False when none waits."""
        call_id = frame.get("id")
        future = link.pending.get(call_id) if isinstance(call_id, int) else None
        if future is None or future.done():
            return False
        future.set_result(frame)
        return True

    async def touch(self, link: SpokeLink) -> bool:
        """Record that the spoke was seen now; False when it was deleted meanwhile."""
        store = self.kernel.store.spokes
        try:
            current = await store.get(link.spoke.id)
        except NotFound:
            return False
        link.spoke = replace(current, last_seen_at=utcnow())
        await store.put(link.spoke)
        return True

    async def authenticate(self, frame: dict[str, Any]) -> tuple[Spoke, str | None]:
        """The spoke a hello or enroll frame stands for, and (after an enrollment) its new
        credential. ``InvalidInput`` for a malformed frame, ``PermissionError``-like
        :class:`_Refused` for a refused secret or a taken name."""
        kind = frame.get("type")
        try:
            name = proto.check_spoke_name(frame.get("name"))
        except InvalidInput:
            raise _Refused(proto.CLOSE_BAD_HELLO, "invalid spoke name") from None
        store = self.kernel.store.spokes
        if kind == "hello":
            try:
                credential = proto.check_secret(frame.get("credential"), proto.CREDENTIAL_PREFIX)
                spoke = await store.find_by_credential(proto.hash_secret(credential))
            except (InvalidInput, NotFound):
                raise _Refused(proto.CLOSE_UNAUTHORIZED, "credential refused") from None
            # the stored hash matched; the name must match too
            if not hmac.compare_digest(spoke.name, name):
                raise _Refused(proto.CLOSE_UNAUTHORIZED, "credential refused")
            return spoke, None
        if kind != "enroll":
            raise _Refused(proto.CLOSE_BAD_HELLO, "expected hello or enroll")
        try:
            token = proto.check_secret(frame.get("join_token"), proto.JOIN_TOKEN_PREFIX)
        except InvalidInput:
            raise _Refused(proto.CLOSE_UNAUTHORIZED, "join token refused") from None
        if name in {s.name for s in await store.list()}:
            raise _Refused(proto.CLOSE_NAME_TAKEN, f"a spoke named {name} is enrolled already")
        try:
            await consume_join_token(self.kernel.store, token, name)
        except NotFound:
            raise _Refused(proto.CLOSE_UNAUTHORIZED, "join token refused") from None
        credential = proto.new_secret(proto.CREDENTIAL_PREFIX)
        register_secret(credential)
        runtime = str(frame.get("runtime") or "")[:40]
        spoke = Spoke(
            id="sp_" + secrets.token_hex(8),
            name=name,
            credential_hash=proto.hash_secret(credential),
            last_seen_at=utcnow(),
            data={"runtime": runtime},
        )
        try:
            await store.put(spoke)
        except Conflict:
            raise _Refused(
                proto.CLOSE_NAME_TAKEN, f"a spoke named {name} is enrolled already"
            ) from None
        self.known.add(name)
        log.info("spoke %s enrolled", name)
        await self.kernel.store.audit.append(
            "spoke.enroll", actor="hub", detail={"spoke": name, "spoke_id": spoke.id}
        )
        return spoke, credential

    async def endpoint(self, websocket: Any) -> None:
        """The ``/spoke/connect`` WebSocket (a Starlette ``WebSocket``)."""
        from starlette.websockets import WebSocketDisconnect

        await websocket.accept()
        max_bytes = self.config.max_frame_bytes
        try:
            async with asyncio.timeout(proto.HELLO_TIMEOUT):
                message = await websocket.receive()
            data = _data(message)
            if data is None:
                return
            # nothing large is parsed before a spoke is authenticated
            frame = proto.decode(data, min(max_bytes, HELLO_MAX_BYTES))
            spoke, credential = await self.authenticate(frame)
        except _Refused as refused:
            log.warning("refused a spoke connection: %s", refused.reason)
            await _close(websocket, refused.code, refused.reason)
            return
        except (TimeoutError, proto.FrameError):
            await _close(websocket, proto.CLOSE_BAD_HELLO, "expected hello or enroll")
            return
        except WebSocketDisconnect:
            return
        lock = asyncio.Lock()

        async def send(text: str) -> None:
            async with lock:
                await websocket.send_text(text)

        async def close(code: int, reason: str) -> None:
            await _close(websocket, code, reason)

        runtime = str(frame.get("runtime") or spoke.data.get("runtime") or "")[:40]
        link = SpokeLink(spoke, runtime, send, close)
        welcome: dict[str, Any] = {"type": "welcome", "spoke_id": spoke.id, "name": spoke.name}
        if credential is not None:
            welcome["credential"] = credential
        await send(proto.encode(welcome))
        await self.attach(link)
        await self.touch(link)
        log.info("spoke %s connected", spoke.name)
        heartbeat = asyncio.create_task(self._heartbeat(link))
        try:
            while True:
                message = await websocket.receive()
                data = _data(message)
                if data is None:
                    break
                try:
                    frame = proto.decode(data, max_bytes)
                except proto.FrameError as exc:
                    log.warning("spoke %s: ignored a frame: %s", spoke.name, exc)
                    continue
                if frame["type"] in ("result", "error"):
                    if not self.resolve(link, frame):
                        log.debug("spoke %s: an answer nobody waits for", spoke.name)
                else:
                    log.warning("spoke %s: ignored a %r frame", spoke.name, frame["type"][:20])
        except WebSocketDisconnect:
            pass
        finally:
            heartbeat.cancel()
            superseded = self.links.get(spoke.name) is not link
            self.detach(link)
            if not superseded:
                with contextlib.suppress(Exception):
                    await self.touch(link)
                log.info("spoke %s disconnected", spoke.name)

    async def _heartbeat(self, link: SpokeLink) -> None:
        while not link.closed:
            await asyncio.sleep(self.config.heartbeat)
            try:
                alive = await self.touch(link)
            except Exception as exc:
                log.warning("spoke %s: cannot record last_seen: %s", link.name, type(exc).__name__)
                continue
            if not alive:
                log.warning("spoke %s was deleted: disconnecting it", link.name)
                self.detach(link)
                await link.close(proto.CLOSE_UNAUTHORIZED, "the spoke was deleted")
                return


class _Refused(Exception):
    """A connection the hub refuses: the close code and a reason without any secret."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _data(message: dict[str, Any]) -> str | bytes | None:
    if message.get("type") == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is not None:
        return str(text)
    return bytes(message.get("bytes") or b"")


async def _close(websocket: Any, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code, reason[:120])


_hubs: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()


def hub_for(kernel: KernelAPI) -> Hub:
    """The one hub of a kernel (the route, the manager and the tools share it)."""
    hub = _hubs.get(kernel)
    if hub is None:
        hub = _hubs[kernel] = Hub(kernel)
    return hub


def build_spoke_app(kernel: KernelAPI) -> Any:
    """The ASGI app mounted at ``/spoke``: ``/spoke/connect``. It also wires the box manager to
    the hub (``spoke_runtime``, ``spoke_names``)."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from .manager import manager_for

    hub = hub_for(kernel)
    manager = manager_for(kernel)
    manager.spoke_runtime = hub.runtime
    manager.spoke_names = hub.names
    return Starlette(routes=[WebSocketRoute("/connect", hub.endpoint)])


__all__ = ["Hub", "SpokeLink", "build_spoke_app", "hub_for"]
