"""The docker box runtime against a real dockerd (started by tests/fixtures/dockerd.py): the
conformance kit's BoxRuntimeContract, then what only docker can show — limits and labels as the
engine records them, container counts around refused creates, the SIGTERM-then-kill timeout,
containers the runtime does not manage left alone, an engine that is down."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from valetkey_hookspecs import (
    BoxSpec,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    RuntimeUnavailable,
)
from valetkey_hookspecs.testing import BoxRuntimeContract, PluginContract
from valetkey_runtime_docker import valetkey_doctor
from valetkey_runtime_docker.config import DockerConfig
from valetkey_runtime_docker.runtime import DockerRuntime

pytestmark = pytest.mark.slow

DEAD_HOST = "unix:///nonexistent/valetkey-test/docker.sock"


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self) -> str:
        return "runtime-docker"


class TestDockerContract(BoxRuntimeContract):
    @pytest.fixture
    def runtime(self, make_runtime: Callable[..., DockerRuntime]) -> DockerRuntime:
        return make_runtime(stop_timeout=2)

    @pytest.fixture
    def image(self, dockerd: Any) -> str:
        return str(dockerd.image)

    @pytest.fixture
    def unmanaged_container(self, api: Any, dockerd: Any) -> Any:
        made: list[str] = []

        async def create(name: str) -> Callable[[], Any]:
            def run() -> None:
                api.create_container(
                    dockerd.image,
                    ["sleep", "600"],
                    name=name,
                    labels={"someone.else": "1"},
                    host_config=api.create_host_config(network_mode="none", init=True),
                )
                api.start(name)

            await anyio.to_thread.run_sync(run)
            made.append(name)

            async def still_there() -> bool:
                info = await anyio.to_thread.run_sync(api.inspect_container, name)
                return bool(info["State"]["Running"])

            return still_there

        yield create
        for name in made:
            api.remove_container(name, force=True)


# ---------------------------------------------------------------------------- helpers


def count_containers(api: Any) -> int:
    return len(api.containers(all=True, quiet=True))


@pytest.fixture
async def box_id(runtime: DockerRuntime) -> AsyncIterator[str]:
    box_id = f"vk-docker-{secrets.token_hex(4)}"
    yield box_id
    with contextlib.suppress(NotFound):
        await runtime.destroy(box_id)


def spec(box_id: str, image: str, **changes: Any) -> BoxSpec:
    base: dict[str, Any] = {"command": ("sh", "-c", "cat; sleep 600"), "network": None}
    return BoxSpec(box_id=box_id, image=image, **{**base, **changes})


# ---------------------------------------------------------------------------- docker-specific


@pytest.mark.anyio
async def test_default_limits_network_labels_and_init(
    runtime: DockerRuntime, dockerd: Any, api: Any, box_id: str
) -> None:
    box = await runtime.create(
        spec(box_id, dockerd.image, description="a box", labels={"team": "blue"})
    )
    info = api.inspect_container(box.container_id)
    host = info["HostConfig"]
    assert host["Memory"] == 4096 * 1024 * 1024
    assert host["NanoCpus"] == 2_000_000_000
    assert host["PidsLimit"] == 4096
    assert host["NetworkMode"] == "none"
    assert host["Init"] is True
    # least privilege: every capability dropped but a few, no privilege gain, bounded logs
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m"}}
    caps = await runtime.exec(box_id, "grep CapEff /proc/self/status")
    assert int(caps.stdout.split()[1], 16) & (1 << 13) == 0  # CAP_NET_RAW is gone
    labels = info["Config"]["Labels"]
    assert labels["valetkey.managed"] == "1"
    assert labels["valetkey.box-id"] == box_id
    assert labels["valetkey.description"] == "a box"
    assert labels["team"] == "blue"
    assert info["Config"]["Hostname"] == box_id
    assert info["Config"]["OpenStdin"] is True
    assert info["Name"] == f"/valetkey-{box_id}"
    assert box.state == "running"
    assert box.created_at is not None


@pytest.mark.anyio
async def test_limits_from_config_and_from_the_spec(
    make_runtime: Callable[..., DockerRuntime], dockerd: Any, api: Any
) -> None:
    runtime = make_runtime(memory_mib=512, cpus=1.5, pids=256, network="host", stop_timeout=1)
    ids = [f"vk-limits-{secrets.token_hex(3)}" for _ in range(2)]
    try:
        configured = await runtime.create(spec(ids[0], dockerd.image))
        own = await runtime.create(
            spec(ids[1], dockerd.image, memory_mib=128, cpus=0.25, pids=64, network="none")
        )
        host = api.inspect_container(configured.container_id)["HostConfig"]
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"], host["NetworkMode"]) == (
            512 * 1024 * 1024,
            1_500_000_000,
            256,
            "host",
        )
        host = api.inspect_container(own.container_id)["HostConfig"]
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"], host["NetworkMode"]) == (
            128 * 1024 * 1024,
            250_000_000,
            64,
            "none",
        )
    finally:
        for box_id in ids:
            with contextlib.suppress(NotFound):
                await runtime.destroy(box_id)


@pytest.mark.anyio
async def test_echo_hi_exit_3(runtime: DockerRuntime, dockerd: Any, box_id: str) -> None:
    await runtime.create(spec(box_id, dockerd.image))
    result = await runtime.exec(box_id, "echo hi; exit 3")
    assert (result.stdout, result.stderr, result.exit_code, result.truncated) == (
        "hi\n",
        "",
        3,
        False,
    )


@pytest.mark.anyio
async def test_exec_in_a_stopped_box_is_a_conflict(
    runtime: DockerRuntime, dockerd: Any, box_id: str
) -> None:
    await runtime.create(spec(box_id, dockerd.image, command=("true",)))
    for _ in range(100):
        if (await runtime.get(box_id)).state == "exited":
            break
        await anyio.sleep(0.05)
    with pytest.raises(Conflict, match="not running"):
        await runtime.exec(box_id, "true")
    with pytest.raises(Conflict, match="not running"):
        await runtime.write_stdin(box_id, b"x\n")


@pytest.mark.anyio
async def test_write_stdin_reaches_read_line(
    runtime: DockerRuntime, dockerd: Any, box_id: str
) -> None:
    command = ("sh", "-c", "read line; echo got:$line; sleep 600")
    await runtime.create(spec(box_id, dockerd.image, command=command))
    await runtime.write_stdin(box_id, b"the-code\n")
    for _ in range(100):
        if "got:the-code" in await runtime.logs(box_id):
            break
        await anyio.sleep(0.05)
    assert (await runtime.logs(box_id)).splitlines() == ["got:the-code"]


@pytest.mark.anyio
async def test_stdin_closed_box_refuses_writes(
    runtime: DockerRuntime, dockerd: Any, box_id: str
) -> None:
    await runtime.create(spec(box_id, dockerd.image, command=("sleep", "600"), stdin_open=False))
    with pytest.raises(InvalidInput, match="without stdin"):
        await runtime.write_stdin(box_id, b"x\n")


@pytest.mark.anyio
async def test_destroy_kills_a_process_that_ignores_sigterm_after_the_timeout(
    make_runtime: Callable[..., DockerRuntime], dockerd: Any, api: Any
) -> None:
    runtime = make_runtime(stop_timeout=1)
    stubborn, polite = (f"vk-stop-{secrets.token_hex(3)}" for _ in range(2))
    ignore = ("sh", "-c", "trap '' TERM; echo trapped; while true; do sleep 1; done")
    box = await runtime.create(spec(stubborn, dockerd.image, command=ignore))
    await runtime.create(spec(polite, dockerd.image, command=("sleep", "600")))
    for _ in range(100):
        if "trapped" in await runtime.logs(stubborn):
            break
        await anyio.sleep(0.05)

    started = time.monotonic()
    await runtime.destroy(stubborn)
    took = time.monotonic() - started
    assert 1.0 <= took < 6.0, took
    with pytest.raises(NotFound):
        await runtime.get(stubborn)
    assert not [c for c in api.containers(all=True) if c["Id"] == box.container_id]

    started = time.monotonic()
    await runtime.destroy(polite)
    assert time.monotonic() - started < 1.0  # SIGTERM is enough, no waiting for the kill


@pytest.mark.parametrize("bad", ["UPPER", "-x", "a/b", "a" * 64])
@pytest.mark.anyio
async def test_invalid_ids_create_no_container(
    runtime: DockerRuntime, dockerd: Any, api: Any, bad: str
) -> None:
    before = count_containers(api)
    with pytest.raises(InvalidInput, match="invalid box id"):
        await runtime.create(spec(bad, dockerd.image))
    assert count_containers(api) == before


@pytest.mark.anyio
async def test_duplicate_id_creates_no_container(
    runtime: DockerRuntime, dockerd: Any, api: Any, box_id: str
) -> None:
    await runtime.create(spec(box_id, dockerd.image))
    before = count_containers(api)
    with pytest.raises(Conflict, match="exists already"):
        await runtime.create(spec(box_id, dockerd.image))
    assert count_containers(api) == before


@pytest.mark.anyio
async def test_concurrent_creates_of_one_id_make_one_box(
    runtime: DockerRuntime, dockerd: Any, api: Any, box_id: str
) -> None:
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            await runtime.create(spec(box_id, dockerd.image))
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(attempt)
    assert sorted(outcomes) == ["conflict"] * 3 + ["created"]
    named = [c for c in api.containers(all=True) if f"/valetkey-{box_id}" in c["Names"]]
    assert len(named) == 1


@pytest.mark.anyio
async def test_max_boxes_refuses_before_a_container_exists(
    make_runtime: Callable[..., DockerRuntime], dockerd: Any, api: Any
) -> None:
    probe = make_runtime()
    existing = len(await probe.list())
    runtime = make_runtime(max_boxes=existing + 1, stop_timeout=1)
    first, second = (f"vk-max-{secrets.token_hex(3)}" for _ in range(2))
    await runtime.create(spec(first, dockerd.image))
    try:
        before = count_containers(api)
        with pytest.raises(Conflict, match="max_boxes is"):
            await runtime.create(spec(second, dockerd.image))
        assert count_containers(api) == before
    finally:
        await runtime.destroy(first)
    await runtime.create(spec(second, dockerd.image))  # room again
    await runtime.destroy(second)


@pytest.mark.anyio
async def test_an_unmanaged_container_is_never_touched(
    runtime: DockerRuntime, dockerd: Any, api: Any
) -> None:
    name = f"vk-theirs-{secrets.token_hex(3)}"
    api.create_container(
        dockerd.image,
        ["sleep", "600"],
        name=name,
        host_config=api.create_host_config(network_mode="none", init=True),
    )
    api.start(name)
    try:
        assert name not in {b.id for b in await runtime.list()}
        for call in (runtime.get(name), runtime.destroy(name), runtime.exec(name, "true")):
            with pytest.raises(NotFound):
                await call
        info = api.inspect_container(name)
        assert info["State"]["Running"] is True
        assert "valetkey.managed" not in (info["Config"]["Labels"] or {})
        # a container found by an id prefix is not a box either
        with pytest.raises(NotFound):
            await runtime.get(info["Id"][:12])
    finally:
        api.remove_container(name, force=True)


@pytest.mark.anyio
async def test_a_container_named_like_a_box_without_our_labels_is_not_a_box(
    runtime: DockerRuntime, dockerd: Any, api: Any, box_id: str
) -> None:
    name = f"valetkey-{box_id}"  # the name of a box, but not labelled as one of ours
    for labels in ({}, {"valetkey.managed": "1", "valetkey.box-id": "someone-else"}):
        api.create_container(
            dockerd.image,
            ["sleep", "600"],
            name=name,
            labels=labels,
            host_config=api.create_host_config(network_mode="none", init=True),
        )
        api.start(name)
        try:
            assert box_id not in {b.id for b in await runtime.list()}
            for call in (
                runtime.get(box_id),
                runtime.destroy(box_id),
                runtime.exec(box_id, "true"),
            ):
                with pytest.raises(NotFound):
                    await call
            assert api.inspect_container(name)["State"]["Running"] is True
        finally:
            api.remove_container(name, force=True)


@pytest.mark.anyio
async def test_a_foreign_container_on_a_box_name_is_a_conflict_and_left_alone(
    runtime: DockerRuntime, dockerd: Any, api: Any, box_id: str
) -> None:
    name = f"valetkey-{box_id}"  # what the box's container would be called
    api.create_container(dockerd.image, ["sleep", "600"], name=name, labels={"x": "1"})
    api.start(name)
    try:
        before = count_containers(api)
        with pytest.raises(Conflict, match="does not manage"):
            await runtime.create(spec(box_id, dockerd.image))
        assert count_containers(api) == before
        for call in (runtime.get(box_id), runtime.destroy(box_id), runtime.exec(box_id, "true")):
            with pytest.raises(NotFound):
                await call
        assert box_id not in {b.id for b in await runtime.list()}
        assert api.inspect_container(name)["State"]["Running"] is True
    finally:
        api.remove_container(name, force=True)


@pytest.mark.anyio
async def test_one_character_ids_work(runtime: DockerRuntime, dockerd: Any) -> None:
    box_id = secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789")
    with contextlib.suppress(NotFound):
        await runtime.destroy(box_id)
    await runtime.create(spec(box_id, dockerd.image))
    try:
        assert (await runtime.exec(box_id, "hostname")).stdout == f"{box_id}\n"
    finally:
        await runtime.destroy(box_id)


@pytest.mark.anyio
async def test_a_failed_start_leaves_no_container(
    make_runtime: Callable[..., DockerRuntime], dockerd: Any, api: Any, box_id: str
) -> None:
    runtime = make_runtime(init=False)  # with docker-init, PID 1 starts and reports the failure
    before = count_containers(api)
    with pytest.raises((InvalidInput, RuntimeUnavailable)):
        await runtime.create(spec(box_id, dockerd.image, command=("/no/such/binary",)))
    assert count_containers(api) == before
    with pytest.raises(NotFound):
        await runtime.get(box_id)


@pytest.mark.anyio
async def test_missing_image_with_pull_never(
    make_runtime: Callable[..., DockerRuntime], api: Any, box_id: str
) -> None:
    runtime = make_runtime(pull="never")
    before = count_containers(api)
    with pytest.raises(NotFound, match="pull = 'never'"):
        await runtime.create(spec(box_id, "valetkey-test/absent:1"))
    assert count_containers(api) == before


@pytest.mark.anyio
async def test_env_values_stay_out_of_logs_and_errors(
    runtime: DockerRuntime, dockerd: Any, box_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "ghp_" + secrets.token_hex(12)
    caplog.set_level(logging.DEBUG)
    box_spec = spec(box_id, dockerd.image, env={"GITHUB_TOKEN": secret})
    assert secret not in repr(box_spec)
    await runtime.create(box_spec)
    assert (await runtime.exec(box_id, 'echo "$GITHUB_TOKEN"')).stdout == f"{secret}\n"
    with pytest.raises(Conflict) as info:
        await runtime.create(box_spec)
    assert secret not in str(info.value)
    dead = DockerRuntime(DockerConfig(docker_host=DEAD_HOST))
    with pytest.raises(RuntimeUnavailable) as down:
        await dead.create(replace_id(box_spec, "vk-dead"))
    assert secret not in str(down.value)
    assert secret not in caplog.text


def replace_id(box_spec: BoxSpec, box_id: str) -> BoxSpec:
    from dataclasses import replace

    return replace(box_spec, box_id=box_id)


@pytest.mark.anyio
async def test_list_shows_only_managed_boxes(
    runtime: DockerRuntime, dockerd: Any, api: Any, box_id: str
) -> None:
    await runtime.create(spec(box_id, dockerd.image, description="listed"))
    boxes = await runtime.list()
    managed = {c["Id"] for c in api.containers(all=True, filters={"label": "valetkey.managed=1"})}
    assert {b.container_id for b in boxes} == managed
    mine = next(b for b in boxes if b.id == box_id)
    assert (mine.runtime, mine.description, mine.state) == ("docker", "listed", "running")
    assert mine.image == dockerd.image


# ---------------------------------------------------------------------------- engine down


@pytest.mark.anyio
async def test_engine_down_is_runtime_unavailable_naming_docker_host() -> None:
    runtime = DockerRuntime(DockerConfig(docker_host=DEAD_HOST))
    for call in (runtime.list(), runtime.get("vk-x"), runtime.is_alive("abc")):
        with pytest.raises(RuntimeUnavailable) as info:
            await call
        message = str(info.value)
        assert DEAD_HOST in message
        assert "DOCKER_HOST" in message
        assert "start docker" in message
    await runtime.close()
    await runtime.close()  # idempotent


@pytest.mark.anyio
async def test_engine_down_via_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", DEAD_HOST)
    with pytest.raises(RuntimeUnavailable, match="DOCKER_HOST"):
        await DockerRuntime().list()


@pytest.mark.anyio
async def test_is_alive_true_false_and_raise(
    runtime: DockerRuntime, dockerd: Any, box_id: str
) -> None:
    box = await runtime.create(spec(box_id, dockerd.image))
    assert box.container_id
    assert await runtime.is_alive(box.container_id) is True
    assert await runtime.is_alive(box.container_id[:12]) is True
    await runtime.destroy(box_id)
    assert await runtime.is_alive(box.container_id) is False
    dead = DockerRuntime(DockerConfig(docker_host=DEAD_HOST))
    with pytest.raises(RuntimeUnavailable):
        await dead.is_alive(box.container_id)


class _Kernel:
    def __init__(self, config: DockerConfig | None) -> None:
        self.config = config

    def plugin_config(self, plugin: str) -> DockerConfig | None:
        assert plugin == "runtime-docker"
        return self.config


def test_doctor_reports_an_unreachable_engine_quickly(dockerd: Any) -> None:
    started = time.monotonic()
    problems = valetkey_doctor(_Kernel(DockerConfig(docker_host=DEAD_HOST)))  # type: ignore[arg-type]
    assert time.monotonic() - started < 3
    assert problems is not None
    assert len(problems) == 1
    assert DEAD_HOST in problems[0]
    assert "start docker" in problems[0]
    assert valetkey_doctor(_Kernel(DockerConfig(docker_host=dockerd.host))) is None  # type: ignore[arg-type]


def test_doctor_is_quiet_without_any_sign_of_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    import valetkey_runtime_docker as plugin

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(plugin, "DEFAULT_SOCKET", "/nonexistent/docker.sock")
    assert valetkey_doctor(_Kernel(None)) is None  # type: ignore[arg-type]
    monkeypatch.setenv("DOCKER_HOST", DEAD_HOST)
    problems = valetkey_doctor(_Kernel(None))  # type: ignore[arg-type]
    assert problems is not None
    assert "DOCKER_HOST" in problems[0]


def test_plugins_doctor_cli_names_the_engine(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    config = tmp_path / "plugins.toml"
    config.write_text(f'[plugin.runtime-docker]\ndocker_host = "{DEAD_HOST}"\n')
    env = {
        "VALETKEY_CONFIG": str(config),
        "VALETKEY_HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "valetkey", "plugins", "doctor"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert "runtime-docker" in output
    assert DEAD_HOST in output
    assert "start docker" in output


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"memory_mib": 0}, "memory_mib"),
        ({"cpus": -1.0}, "cpus"),
        ({"pids": 0}, "pids"),
        ({"max_boxes": -1}, "max_boxes"),
        ({"stop_timeout": -1}, "stop_timeout"),
        ({"network": " "}, "network"),
        ({"pull": "always"}, "pull"),
        ({"api_version": "latest"}, "api_version"),
        ({"memory_mib": "4g"}, "memory_mib"),
        ({"memroy_mib": 1}, "memroy_mib"),
    ],
)
def test_config_errors_name_the_field(table: dict[str, Any], field: str) -> None:
    from valetkey.config import validate

    with pytest.raises(ConfigError) as info:
        validate("runtime-docker", DockerConfig, table, base=None)
    assert field in str(info.value)
    assert "[plugin.runtime-docker]" in str(info.value)


def test_config_defaults() -> None:
    from valetkey.config import validate

    config = validate("runtime-docker", DockerConfig, {"cpus": 1}, base=None)
    assert (config.memory_mib, config.cpus, config.pids) == (4096, 1.0, 4096)
    assert (config.network, config.stop_timeout, config.init) == ("none", 10, True)
