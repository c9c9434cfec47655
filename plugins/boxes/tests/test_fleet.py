"""Clustering without an engine: the wire format, the spoke's scoped runtime (labels, allow-list,
isolation), the spoke credential (keyring fallback to a 0600 file), the backoff, and a real hub
(``Hub.endpoint`` served by uvicorn in-process, the real SQLite store) with real spokes
(``spoke.run`` over the websockets client) in front of an in-memory runtime: enrollment with
one-time tokens, routed calls and their errors, per-call timeouts, the frame size limit, a
reconnect superseding the old connection, a deleted spoke dropped, and list fan-out."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from valetkey.kernel import load
from valetkey.policy import parse_policy
from valetkey_boxes import fleet_protocol as proto
from valetkey_boxes.hub import Hub
from valetkey_boxes.jointokens import create_join_token
from valetkey_boxes.manager import BoxManager
from valetkey_boxes.spoke import (
    Backoff,
    RunOptions,
    SpokeCredential,
    SpokeRefused,
    SpokeRuntime,
    handle,
    load_credential,
    run,
    save_credential,
)
from valetkey_hookspecs import (
    Box,
    BoxFile,
    BoxSpec,
    ConfigError,
    ExecResult,
    InvalidInput,
    NotFound,
    RuntimeUnavailable,
    hookimpl,
)

pytestmark = pytest.mark.anyio

IMAGE = "registry.example/agent:1"


class MemoryRuntime:
    """An in-memory box runtime (one 'engine' that several spokes may share)."""

    name = "memory"

    def __init__(self) -> None:
        self.boxes: dict[str, Box] = {}
        self.stdin: dict[str, bytes] = {}
        self.exec_delay = 0.0

    async def create(self, spec: BoxSpec) -> Box:
        box = Box(
            id=spec.box_id,
            runtime=self.name,
            image=spec.image,
            state="running",
            container_id=f"c-{spec.box_id}",
            labels=dict(spec.labels),
        )
        self.boxes[spec.box_id] = box
        return box

    async def get(self, box_id: str) -> Box:
        if box_id not in self.boxes:
            raise NotFound(f"no box {box_id!r}")
        return self.boxes[box_id]

    async def list(self) -> list[Box]:
        return list(self.boxes.values())

    async def exec(self, box_id: str, command: str, *, timeout: float | None = None) -> ExecResult:
        await self.get(box_id)
        await asyncio.sleep(self.exec_delay)
        return ExecResult(stdout=f"{box_id}: {command}\n", stderr="", exit_code=0)

    async def logs(self, box_id: str, tail: int = 200) -> str:
        await self.get(box_id)
        return f"logs of {box_id} ({tail})"

    async def write_stdin(self, box_id: str, data: bytes) -> None:
        await self.get(box_id)
        self.stdin[box_id] = self.stdin.get(box_id, b"") + data

    async def destroy(self, box_id: str) -> None:
        await self.get(box_id)
        del self.boxes[box_id]

    async def is_alive(self, container_id: str) -> bool:
        return any(b.container_id == container_id for b in self.boxes.values())

    async def close(self) -> None:
        pass


# =========================================================================== wire format


def test_websocket_url_needs_https_off_loopback_and_no_credentials():
    assert proto.websocket_url("http://127.0.0.1:8760") == "ws://127.0.0.1:8760/spoke/connect"
    assert (
        proto.websocket_url("https://hub.example/base/") == "wss://hub.example/base/spoke/connect"
    )
    for bad in ("http://hub.example", "https://u:p@hub.example", "ftp://x", "https://h/?t=1"):
        with pytest.raises(InvalidInput):
            proto.websocket_url(bad)


def test_a_spec_survives_the_wire_with_its_files():
    spec = BoxSpec(
        box_id="b1",
        image=IMAGE,
        env={"A": "1"},
        files=(BoxFile("/etc/x", b"\x00\xffbin", mode=0o600, uid=1, gid=2),),
        command=("sh", "-c", "true"),
        memory_mib=64,
        cpus=0.5,
        labels={"k": "v"},
    )
    frame = proto.decode(proto.encode({"type": "call", "spec": proto.spec_to_wire(spec)}))
    assert proto.spec_from_wire(frame["spec"]) == spec
    with pytest.raises(InvalidInput, match="malformed"):
        proto.spec_from_wire({"box_id": "b1"})
    with pytest.raises(InvalidInput, match="wrong type"):
        proto.spec_from_wire({**proto.spec_to_wire(spec), "memory_mib": "64"})


def test_frames_are_bounded_and_errors_keep_their_class_without_secrets():
    with pytest.raises(proto.FrameError, match="over"):
        proto.decode("x" * 100, max_bytes=10)
    for bad in ("nope", "[]", '{"a": 1}'):
        with pytest.raises(proto.FrameError):
            proto.decode(bad)
    frame = proto.error_frame(3, NotFound("no box 'x'"))
    assert isinstance(proto.error_from("s1", frame["error"]), NotFound)
    assert "spoke 's1': no box 'x'" in str(proto.error_from("s1", frame["error"]))
    hidden = proto.error_frame(4, RuntimeError("secret-value-123"))
    assert "secret-value-123" not in str(hidden)
    assert isinstance(proto.error_from("s1", {"kind": "Weird"}), RuntimeUnavailable)


def test_secrets_and_names_are_checked_without_echoing_them():
    with pytest.raises(InvalidInput) as caught:
        proto.check_secret("vkjoin_not valid!", proto.JOIN_TOKEN_PREFIX)
    assert "not valid!" not in str(caught.value)
    assert proto.check_secret(proto.new_secret("vksc_"), proto.CREDENTIAL_PREFIX)
    for bad in ("local", "UPPER", "", "a" * 64):
        with pytest.raises(InvalidInput):
            proto.check_spoke_name(bad)


# =========================================================================== the spoke's runtime


async def test_a_spoke_labels_its_boxes_checks_images_and_sees_only_its_own():
    engine = MemoryRuntime()
    a, b = SpokeRuntime(engine, "a", ["registry.example/*"]), SpokeRuntime(engine, "b", [IMAGE])
    box = await a.create(BoxSpec(box_id="one", image=IMAGE, labels={proto.SPOKE_LABEL: "b"}))
    assert box.labels[proto.SPOKE_LABEL] == "a"  # the hub cannot pick another spoke's label
    await b.create(BoxSpec(box_id="two", image=IMAGE))
    with pytest.raises(InvalidInput, match="not allowed on spoke 'a'"):
        await a.create(BoxSpec(box_id="three", image="evil/x:1"))
    assert "three" not in engine.boxes
    with pytest.raises(InvalidInput, match="box id"):
        await a.create(BoxSpec(box_id="Bad", image=IMAGE))
    assert [x.id for x in await a.list()] == ["one"]
    assert [x.id for x in await b.list()] == ["two"]
    for op in (a.get("two"), a.exec("two", "id"), a.logs("two"), a.destroy("two")):
        with pytest.raises(NotFound, match="on spoke 'a'"):
            await op
    assert await a.is_alive("c-two") is False and await b.is_alive("c-two") is True
    assert "two" in engine.boxes


async def test_handle_answers_each_method_and_refuses_bad_params():
    engine = MemoryRuntime()
    rt = SpokeRuntime(engine, "a", [IMAGE])
    spec = proto.spec_to_wire(BoxSpec(box_id="one", image=IMAGE))
    assert (await handle(rt, "create", {"spec": spec}))["id"] == "one"
    assert (await handle(rt, "exec", {"box_id": "one", "command": "id"}))["exit_code"] == 0
    data = base64.b64encode(b"code\n").decode()
    await handle(rt, "write_stdin", {"box_id": "one", "data": data})
    assert engine.stdin["one"] == b"code\n"
    assert await handle(rt, "logs", {"box_id": "one", "tail": 5}) == "logs of one (5)"
    for method, params in (
        ("exec", {"box_id": "one", "command": " "}),
        ("logs", {"box_id": "one", "tail": 0}),
        ("get", {"box_id": "../x"}),
        ("write_stdin", {"box_id": "one", "data": "%%%"}),
        ("nope", {}),
        ("get", []),
    ):
        with pytest.raises(InvalidInput):
            await handle(rt, method, params)


# =========================================================================== credential, backoff


def test_the_credential_goes_to_the_secret_store_never_to_a_plain_file(tmp_path, monkeypatch):
    from valetkey.kernel import load
    from valetkey.policy import parse_policy

    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    kernel = load(
        policy=parse_policy({"autoload": False, "enable": ["secrets-keyring"]}),
        home=tmp_path / "home",
    )
    secrets = kernel.secret_store  # no OS keyring here: AES-GCM encrypted files
    cred = SpokeCredential("http://127.0.0.1:1", "a", "sp_1", proto.new_secret("vksc_"))
    assert cred.credential not in repr(cred)
    where = save_credential(tmp_path, cred, secrets)
    assert where == secrets.description and cred.credential not in where
    assert (tmp_path / "spoke.toml").stat().st_mode & 0o777 == 0o600
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert cred.credential.encode() not in on_disk  # nowhere in plaintext
    loaded = load_credential(tmp_path, "http://127.0.0.1:1/", "a", secrets)
    assert loaded is not None and loaded.credential == cred.credential
    assert load_credential(tmp_path, "http://127.0.0.1:2", "a", secrets) is None
    assert load_credential(tmp_path, "http://127.0.0.1:1", "b", secrets) is None
    secrets.delete("valetkey-spoke:sp_1")
    with pytest.raises(ConfigError, match="enroll again"):
        load_credential(tmp_path, "http://127.0.0.1:1", "a", secrets)


def test_backoff_doubles_to_30s_and_resets_after_a_long_connection():
    backoff = Backoff()
    assert [backoff.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay(connected_for=61) == 1
    assert backoff.next_delay(connected_for=5) == 2


# =========================================================================== hub and spokes live


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def hub_kernel(tmp_path, monkeypatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    doc = {
        "autoload": False,
        "enable": ["store-sqlite", "secrets-keyring", "sealer-local", "boxes", "memory"],
        "plugin": {
            "boxes": {
                "default_image": IMAGE,
                "hub": {"call_timeout": 2.0, "heartbeat": 0.2, "max_frame_bytes": 70_000},
            }
        },
    }
    local = MemoryRuntime()

    class LocalRuntime:
        @hookimpl
        def valetkey_register_box_runtimes(self, register: Any) -> None:
            register("memory", lambda _ctx: local, default=True)

    kernel = load(
        policy=parse_policy(doc), home=tmp_path / "hub", extra_plugins={"memory": LocalRuntime()}
    )
    async with kernel:
        yield kernel


@pytest.fixture
async def hub(hub_kernel) -> AsyncIterator[tuple[Hub, str]]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    hub = Hub(hub_kernel)
    app = Starlette(routes=[WebSocketRoute("/spoke/connect", hub.endpoint)])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield hub, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


class Running:
    """A spoke's ``run`` loop as a task; ``saved`` is what it stored."""

    def __init__(self, runtime: SpokeRuntime, url: str, **kw: Any) -> None:
        self.saved: list[SpokeCredential] = []
        self.connected = asyncio.Event()
        self.retries: list[str] = []
        options = RunOptions(
            backoff_initial=0.05,
            backoff_cap=0.2,
            on_connected=lambda _id: self.connected.set(),
            on_retry=lambda _d, why: self.retries.append(why),
        )
        self.task = asyncio.create_task(
            run(runtime, url, save=self.saved.append, options=options, **kw)
        )

    async def wait(self) -> None:
        async with asyncio.timeout(10):
            while not self.connected.is_set():
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SpokeRefused):
            await self.task


async def wait_until(check: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_enroll_route_calls_reconnect_supersede_and_fan_out(hub, hub_kernel):
    hub_, url = hub
    store = hub_kernel.store
    engine = MemoryRuntime()
    token = (await create_join_token(store, timedelta(hours=1))).token
    a = Running(SpokeRuntime(engine, "a", [IMAGE]), url, credential=None, join_token=token)
    await a.wait()
    credential = a.saved[0]
    [spoke] = await store.spokes.list()
    assert spoke.name == "a" and spoke.credential_hash == proto.hash_secret(credential.credential)
    assert credential.credential not in str(await store.spokes.list())
    # the used token is refused (and does not loop)
    again = Running(SpokeRuntime(engine, "z", [IMAGE]), url, credential=None, join_token=token)
    with pytest.raises(SpokeRefused, match="refused the join token"):
        await again.task
    assert [s.name for s in await store.spokes.list()] == ["a"]

    remote = hub_.runtime("a")
    assert remote.name == "memory"
    box = await remote.create(BoxSpec(box_id="one", image=IMAGE))
    assert box.spoke == "a" and box.labels[proto.SPOKE_LABEL] == "a"
    assert (await remote.exec("one", "id")).stdout == "one: id\n"
    await remote.write_stdin("one", b"x")
    assert await remote.is_alive("c-one") is True
    with pytest.raises(NotFound, match="spoke 'a': no box 'two' on spoke 'a'"):
        await remote.get("two")
    with pytest.raises(InvalidInput, match="not allowed"):
        await remote.create(BoxSpec(box_id="two", image="evil/x:1"))
    with pytest.raises(InvalidInput, match="frame limit"):
        await remote.create(
            BoxSpec(box_id="big", image=IMAGE, files=(BoxFile("/big", b"x" * 80_000),))
        )
    engine.exec_delay = 5
    with pytest.raises(RuntimeUnavailable, match="did not answer exec within"):
        await remote.exec("one", "slow", timeout=0.1)  # 0.1 s exec + 2 s call_timeout
    engine.exec_delay = 0
    with pytest.raises(NotFound, match="no spoke named 'nope'"):
        await hub_.runtime("nope").list()

    # the manager fans list out and tags; an unreachable spoke is skipped and reported
    manager = BoxManager(hub_kernel)
    manager.spoke_runtime, manager.spoke_names = hub_.runtime, hub_.names
    from valetkey_hookspecs import BoxSession

    await store.boxes.put(BoxSession("one", "h1", IMAGE, "memory", spoke="a"))
    await store.boxes.put(BoxSession("gone", "h2", IMAGE, "memory", spoke="ghost"))
    listed = await manager_list(manager)
    assert listed["boxes"]["one"]["spoke"] == "a" and listed["boxes"]["one"]["state"] == "running"
    assert listed["boxes"]["gone"]["state"] == "unknown"
    assert [s["spoke"] for s in listed["skipped"]] == ["ghost"]
    statuses = {s["name"]: s for s in await hub_.statuses()}
    assert statuses["a"]["connected"] and statuses["a"]["box_count"] == 1
    assert statuses["local"]["connected"]

    # a second connection with the same credential supersedes the first
    b = Running(SpokeRuntime(engine, "a", [IMAGE]), url, credential=credential, join_token=None)
    await b.wait()
    with pytest.raises(SpokeRefused, match="replaced this one"):
        await a.task
    assert (await hub_.runtime("a").exec("one", "id")).exit_code == 0
    # the spoke goes away: calls fail at once, sessions stay, last_seen is recorded
    await b.stop()
    await wait_until(lambda: not hub_.connected("a"))
    with pytest.raises(RuntimeUnavailable, match="not connected"):
        await hub_.runtime("a").list()
    listed = await manager_list(manager)
    assert listed["boxes"]["one"]["state"] == "unknown"
    assert (await store.spokes.list())[0].last_seen_at is not None

    # deleted at the hub: the connected spoke is dropped and its credential refused
    c = Running(SpokeRuntime(engine, "a", [IMAGE]), url, credential=credential, join_token=None)
    await c.wait()
    await store.spokes.delete((await store.spokes.list())[0].id)
    with pytest.raises(SpokeRefused, match="credential"):
        async with asyncio.timeout(10):
            await c.task


async def manager_list(manager: BoxManager) -> dict[str, Any]:
    fleet = await manager.list_fleet()
    return {"boxes": {r["box_id"]: r for r in fleet["boxes"]}, "skipped": fleet["skipped"]}


async def test_an_expired_or_revoked_token_and_a_taken_name_are_refused(hub, hub_kernel):
    _hub, url = hub
    store = hub_kernel.store
    engine = MemoryRuntime()

    def spoke(token: str) -> Running:
        return Running(SpokeRuntime(engine, "a", [IMAGE]), url, credential=None, join_token=token)

    expired = await create_join_token(store, timedelta(seconds=1))
    await asyncio.sleep(1.1)
    late = Running(
        SpokeRuntime(engine, "a", [IMAGE]), url, credential=None, join_token=expired.token
    )
    with pytest.raises(SpokeRefused, match="join token"):
        await late.task
    revoked = await create_join_token(store, timedelta(hours=1))
    await store.spokes.revoke_join_token(revoked.record.id)
    gone = Running(
        SpokeRuntime(engine, "a", [IMAGE]), url, credential=None, join_token=revoked.token
    )
    with pytest.raises(SpokeRefused, match="join token"):
        await gone.task
    first = await create_join_token(store, timedelta(hours=1))
    ok = spoke(first.token)
    await ok.wait()
    second = await create_join_token(store, timedelta(hours=1))
    taken = Running(
        SpokeRuntime(engine, "a", [IMAGE]), url, credential=None, join_token=second.token
    )
    with pytest.raises(SpokeRefused, match="under this name"):
        await taken.task
    # a taken name does not burn the token
    states = {t.id: t.used_at for t in await store.spokes.list_join_tokens()}
    assert states[second.record.id] is None
    await ok.stop()
