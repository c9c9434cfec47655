"""The spoke side of clustering (``valetkey spoke run``): this machine's box runtime, served to a
hub over one outbound WebSocket.

- :class:`SpokeRuntime` wraps the local runtime: every box it creates carries the
  ``valetkey.spoke=<name>`` label and it sees only boxes with its own name (spokes sharing one
  engine do not see each other's boxes); it re-checks every box id and the image allow-list
  (``[plugin.boxes.spoke] images``) itself — the hub is not trusted to have done it.
- :func:`handle` answers one ``call`` frame with the wrapped runtime.
- :func:`run` dials ``<hub>/spoke/connect``, enrolls with the join token the first time (and
  saves the credential it gets back) or says hello with the saved credential, then answers
  calls concurrently until the connection ends; a lost connection is retried with exponential
  backoff (1 s, doubling to 30 s, back to 1 s after a connection that lasted a minute). A refused
  token or credential, a taken name or a superseded connection stops it (:class:`SpokeRefused`).
- The credential: ``spoke.toml`` in ``$VALETKEY_HOME`` (hub URL, name, spoke id; 0600); the
  credential itself in valetkey's secret store (``kernel.secret_store``: the OS keyring, or
  AES-GCM encrypted files when there is none — never plaintext), under ``valetkey-spoke:<id>``.

Neither the join token nor the credential is ever logged, put in an exception or in argv.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import logging
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from valetkey_hookspecs import (
    Box,
    BoxRuntime,
    BoxSpec,
    ConfigError,
    ExecResult,
    InvalidInput,
    NotFound,
    SecretStore,
    ValetkeyError,
)
from valetkey_hookspecs.boxes import check_box_id
from valetkey_hookspecs.files import atomic_write
from valetkey_hookspecs.redaction import register_secret

from . import fleet_protocol as proto

log = logging.getLogger("valetkey.boxes.spoke")

CREDENTIAL_FILE = "spoke.toml"
KEYRING_SERVICE = "valetkey-spoke"


# =========================================================================== the scoped runtime


class SpokeRuntime:
    """The local runtime as spoke ``spoke`` exposes it to its hub (see the module doc)."""

    def __init__(self, inner: BoxRuntime, spoke: str, images: list[str]) -> None:
        self.inner, self.spoke, self.images = inner, proto.check_spoke_name(spoke), list(images)
        self.name = inner.name
        self._owned: set[str] = set()

    def allowed(self, image: str) -> bool:
        """Whether ``image`` matches a pattern of the allow-list."""
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.images)

    async def create(self, spec: BoxSpec) -> Box:
        """Create the box with this spoke's label, if its id is valid and its image allowed."""
        check_box_id(spec.box_id)
        if not self.allowed(spec.image):
            raise InvalidInput(
                f"image {spec.image!r} is not allowed on spoke {self.spoke!r} "
                "(its [plugin.boxes.spoke] images allow-list)"
            )
        labels = {**spec.labels, proto.SPOKE_LABEL: self.spoke}
        box = await self.inner.create(replace(spec, labels=labels))
        self._owned.add(box.id)
        return box

    async def list(self) -> list[Box]:
        """The boxes with this spoke's label."""
        found = await self.inner.list()
        boxes = [b for b in found if b.labels.get(proto.SPOKE_LABEL) == self.spoke]
        self._owned = {b.id for b in boxes}
        return boxes

    async def _mine(self, box_id: str) -> None:
        check_box_id(box_id)
        if box_id in self._owned:
            return
        await self.list()
        if box_id not in self._owned:
            raise NotFound(f"no box {box_id!r} on spoke {self.spoke!r}")

    async def get(self, box_id: str) -> Box:
        """The box, if it is this spoke's."""
        await self._mine(box_id)
        return await self.inner.get(box_id)

    async def exec(self, box_id: str, command: str, *, timeout: float | None = None) -> ExecResult:
        """``sh -c command`` in one of this spoke's boxes."""
        await self._mine(box_id)
        return await self.inner.exec(box_id, command, timeout=timeout)

    async def logs(self, box_id: str, tail: int = 200) -> str:
        """The console of one of this spoke's boxes."""
        await self._mine(box_id)
        return await self.inner.logs(box_id, tail)

    async def write_stdin(self, box_id: str, data: bytes) -> None:
        """Write to the main process of one of this spoke's boxes."""
        await self._mine(box_id)
        await self.inner.write_stdin(box_id, data)

    async def destroy(self, box_id: str) -> None:
        """Destroy one of this spoke's boxes."""
        await self._mine(box_id)
        await self.inner.destroy(box_id)
        self._owned.discard(box_id)

    async def is_alive(self, container_id: str) -> bool:
        """Whether a container of this spoke's boxes runs (False for any other container)."""
        if not any(b.container_id == container_id for b in await self.list()):
            return False
        return await self.inner.is_alive(container_id)

    async def close(self) -> None:
        """Close the local runtime."""
        await self.inner.close()


def _box_id(params: dict[str, Any]) -> str:
    return check_box_id(params.get("box_id"))  # type: ignore[arg-type]


async def handle(runtime: SpokeRuntime, method: str, params: object) -> Any:
    """Run one call from the hub; its JSON result (``InvalidInput`` for a bad call)."""
    if not isinstance(params, dict):
        raise InvalidInput("call params must be an object")
    if method == "create":
        return proto.box_to_wire(await runtime.create(proto.spec_from_wire(params.get("spec"))))
    if method == "get":
        return proto.box_to_wire(await runtime.get(_box_id(params)))
    if method == "list":
        return [proto.box_to_wire(b) for b in await runtime.list()]
    if method == "exec":
        command, timeout = params.get("command"), params.get("timeout")
        if not isinstance(command, str) or not command.strip():
            raise InvalidInput("exec: give a shell command line")
        if timeout is not None and (not isinstance(timeout, int | float) or not timeout > 0):
            raise InvalidInput("exec: timeout must be a positive number of seconds")
        result = await runtime.exec(_box_id(params), command, timeout=timeout)
        return proto.exec_to_wire(result)
    if method == "logs":
        tail = params.get("tail", 200)
        if not isinstance(tail, int) or isinstance(tail, bool) or not 1 <= tail <= 10_000:
            raise InvalidInput("logs: tail must be 1..10000")
        return await runtime.logs(_box_id(params), tail)
    if method == "write_stdin":
        try:
            data = base64.b64decode(str(params.get("data") or ""), validate=True)
        except ValueError:
            raise InvalidInput("write_stdin: data must be base64") from None
        await runtime.write_stdin(_box_id(params), data)
        return None
    if method == "destroy":
        await runtime.destroy(_box_id(params))
        return None
    if method == "is_alive":
        container_id = params.get("container_id")
        if not isinstance(container_id, str) or not container_id:
            raise InvalidInput("is_alive: give a container id")
        return await runtime.is_alive(container_id)
    raise InvalidInput(f"unknown method {method[:40]!r}")


# =========================================================================== the credential


@dataclass(frozen=True)
class SpokeCredential:
    """This spoke's enrollment at a hub (``repr`` never shows the credential)."""

    hub_url: str
    name: str
    spoke_id: str
    credential: str = field(repr=False)
    #: where the credential is kept: ``keyring`` or ``file``
    stored_in: str = "keyring"


def credential_path(home: Path) -> Path:
    """Where the spoke's enrollment is kept."""
    return home / CREDENTIAL_FILE


def load_credential(
    home: Path, hub_url: str, name: str, secrets: SecretStore
) -> SpokeCredential | None:
    """The saved enrollment at ``hub_url`` as ``name``; None when there is none (or it is for
    another hub or name). ``ConfigError`` when the file is unreadable or the credential lost."""
    file = credential_path(home)
    try:
        data = tomllib.loads(file.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {file}: {type(exc).__name__}") from None
    if data.get("hub_url") != hub_url.rstrip("/") or data.get("name") != name:
        return None
    spoke_id = data.get("spoke_id")
    if not isinstance(spoke_id, str) or not spoke_id:
        raise ConfigError(f"{file}: no spoke_id")
    value = secrets.get(_secret_key(spoke_id))
    if isinstance(value, str) and value:
        register_secret(value)
        return SpokeCredential(hub_url.rstrip("/"), name, spoke_id, value, secrets.description)
    raise ConfigError(
        f"{file} names spoke {name!r} but its credential is not in {secrets.description}: "
        "enroll again with a new join token (valetkey spoke run ... --enroll)"
    )


def save_credential(home: Path, cred: SpokeCredential, secrets: SecretStore) -> str:
    """Keep ``cred``: the credential in valetkey's secret store (the OS keyring, or encrypted
    files when there is none — never plaintext), the rest in ``spoke.toml``; returns where the
    credential went."""
    secrets.set(_secret_key(cred.spoke_id), cred.credential)
    lines = [
        "# valetkey spoke enrollment (written by 'valetkey spoke run'; do not edit)",
        f"hub_url = {json.dumps(cred.hub_url.rstrip('/'))}",
        f"name = {json.dumps(cred.name)}",
        f"spoke_id = {json.dumps(cred.spoke_id)}",
    ]
    atomic_write(credential_path(home), ("\n".join(lines) + "\n").encode("utf-8"), mode=0o600)
    return secrets.description


def _secret_key(spoke_id: str) -> str:
    return f"{KEYRING_SERVICE}:{spoke_id}"


# =========================================================================== the connection


class SpokeRefused(ValetkeyError):
    """The hub refused this spoke for good (bad token or credential, name taken, superseded)."""


@dataclass
class RunOptions:
    """Knobs of :func:`run`."""

    max_frame_bytes: int = proto.MAX_FRAME_BYTES
    concurrency: int = 32
    #: seconds a call other than exec may take here
    call_timeout: float = 120.0
    ping_interval: float = 20.0
    open_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_cap: float = 30.0
    backoff_reset_after: float = 60.0
    #: called after each accepted connection, with the spoke id
    on_connected: Callable[[str], None] | None = None
    #: called before each wait, with the delay and why the connection ended
    on_retry: Callable[[float, str], None] | None = None


class Backoff:
    """``initial`` doubling to ``cap``; back to ``initial`` after a connection that lasted
    ``reset_after`` seconds."""

    def __init__(self, initial: float = 1.0, cap: float = 30.0, reset_after: float = 60.0) -> None:
        self.initial, self.cap, self.reset_after = initial, cap, reset_after
        self._next = initial

    def next_delay(self, connected_for: float | None = None) -> float:
        """The wait before the next attempt (``connected_for``: how long the last one lasted)."""
        if connected_for is not None and connected_for >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay


def _refusal(code: int | None, enrolling: bool) -> SpokeRefused | None:
    if code == proto.CLOSE_UNAUTHORIZED:
        if enrolling:
            return SpokeRefused(
                "the hub refused the join token (unknown, used, expired or revoked): ask the "
                "hub's operator for a new one (valetkey spoke token create --ttl 1h)"
            )
        return SpokeRefused(
            "the hub refused this spoke's credential (the spoke was deleted?): enroll again "
            "with a new join token (valetkey spoke run ... --token-stdin --enroll)"
        )
    if code == proto.CLOSE_NAME_TAKEN:
        return SpokeRefused("another spoke is enrolled at the hub under this name: pick another")
    if code == proto.CLOSE_SUPERSEDED:
        return SpokeRefused("another connection of this spoke replaced this one; stopping")
    if code == proto.CLOSE_BAD_HELLO:
        return SpokeRefused("the hub did not understand this spoke's hello (version mismatch?)")
    return None


async def run(
    runtime: SpokeRuntime,
    hub_url: str,
    *,
    credential: SpokeCredential | None,
    join_token: str | None,
    save: Callable[[SpokeCredential], None],
    options: RunOptions | None = None,
) -> None:
    """Serve ``runtime`` to the hub until cancelled (see the module doc); ``save`` keeps the
    credential of a new enrollment before any call is answered."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    opts = options or RunOptions()
    url = proto.websocket_url(hub_url)
    if credential is None:
        if join_token is None:
            raise InvalidInput("this spoke is not enrolled: give a join token (--token-stdin)")
        proto.check_secret(join_token, proto.JOIN_TOKEN_PREFIX)
        register_secret(join_token)
    backoff = Backoff(opts.backoff_initial, opts.backoff_cap, opts.backoff_reset_after)
    while True:
        connected_at: float | None = None
        enrolling = credential is None
        try:
            async with connect(
                url,
                open_timeout=opts.open_timeout,
                max_size=opts.max_frame_bytes,
                ping_interval=opts.ping_interval,
                ping_timeout=opts.ping_interval,
                close_timeout=2,
            ) as ws:
                hello: dict[str, Any] = {"name": runtime.spoke, "runtime": runtime.name}
                if credential is None:
                    hello.update(type="enroll", join_token=join_token)
                else:
                    hello.update(type="hello", credential=credential.credential)
                await ws.send(proto.encode(hello))
                with anyio.fail_after(proto.HELLO_TIMEOUT):
                    welcome = proto.decode(await ws.recv(), opts.max_frame_bytes)
                if welcome["type"] != "welcome" or not isinstance(welcome.get("spoke_id"), str):
                    raise SpokeRefused("the hub answered the hello with something unexpected")
                if credential is None:
                    secret = proto.check_secret(welcome.get("credential"), proto.CREDENTIAL_PREFIX)
                    register_secret(secret)
                    credential = SpokeCredential(
                        hub_url.rstrip("/"), runtime.spoke, welcome["spoke_id"], secret
                    )
                    save(credential)
                    join_token = None
                    log.info("spoke %s enrolled (id %s)", runtime.spoke, credential.spoke_id)
                connected_at = time.monotonic()
                log.info("spoke %s connected to %s", runtime.spoke, url)
                if opts.on_connected is not None:
                    opts.on_connected(credential.spoke_id)
                await _serve(ws, runtime, opts)
                code = ws.close_code
                if (refused := _refusal(code, enrolling=False)) is not None:
                    raise refused
                why = f"connection closed ({code})" if code is not None else "connection lost"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if (refused := _refusal(code, enrolling)) is not None:
                raise refused from None
            why = f"connection closed ({code})" if code is not None else "connection lost"
        except InvalidStatus as exc:
            status = exc.response.status_code
            why = f"the hub answered HTTP {status}" + (
                " (is [plugin.boxes.hub] enabled there?)" if status == 404 else ""
            )
        except (OSError, InvalidHandshake, TimeoutError, proto.FrameError) as exc:
            why = f"cannot reach the hub: {type(exc).__name__}"
        connected_for = None if connected_at is None else time.monotonic() - connected_at
        delay = backoff.next_delay(connected_for)
        log.info("spoke %s: %s; reconnecting in %gs", runtime.spoke, why, delay)
        if opts.on_retry is not None:
            opts.on_retry(delay, why)
        await anyio.sleep(delay)


async def _serve(ws: Any, runtime: SpokeRuntime, opts: RunOptions) -> None:
    """Answer calls until the connection ends; calls still running are then cancelled."""
    from websockets.exceptions import ConnectionClosed

    limiter = anyio.CapacityLimiter(opts.concurrency)
    async with anyio.create_task_group() as group:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                try:
                    frame = proto.decode(message, opts.max_frame_bytes)
                except proto.FrameError as exc:
                    log.warning("ignored a frame from the hub: %s", exc)
                    continue
                call_id = frame.get("id")
                if frame["type"] != "call" or not isinstance(call_id, int):
                    log.warning("ignored a %r frame from the hub", frame["type"][:20])
                    continue
                group.start_soon(_answer, ws, runtime, frame, call_id, limiter, opts)
        group.cancel_scope.cancel()


async def _answer(
    ws: Any,
    runtime: SpokeRuntime,
    frame: dict[str, Any],
    call_id: int,
    limiter: anyio.CapacityLimiter,
    opts: RunOptions,
) -> None:
    from websockets.exceptions import ConnectionClosed

    method = str(frame.get("method") or "")
    async with limiter:
        try:
            # an exec is bounded by its own timeout (the runtime's); everything else here
            limit = None if method == "exec" else opts.call_timeout
            with anyio.fail_after(limit):
                result = await handle(runtime, method, frame.get("params"))
            answer: dict[str, Any] = {"type": "result", "id": call_id, "result": result}
        except TimeoutError:
            answer = proto.error_frame(
                call_id, ValetkeyError(f"{method} took over {opts.call_timeout:g}s on the spoke")
            )
        except Exception as exc:
            if not isinstance(exc, ValetkeyError):
                log.error("call %s failed: %s", method[:40], type(exc).__name__)
            answer = proto.error_frame(call_id, exc)
    text = proto.encode(answer)
    if len(text.encode("utf-8")) > opts.max_frame_bytes:
        text = proto.encode(
            proto.error_frame(
                call_id, ValetkeyError(f"the answer to {method} is over the frame size limit")
            )
        )
    with contextlib.suppress(ConnectionClosed):
        await ws.send(text)


__all__ = [
    "CREDENTIAL_FILE",
    "KEYRING_SERVICE",
    "Backoff",
    "RunOptions",
    "SpokeCredential",
    "SpokeRefused",
    "SpokeRuntime",
    "credential_path",
    "handle",
    "load_credential",
    "run",
    "save_credential",
]
