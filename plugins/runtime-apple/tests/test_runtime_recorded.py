"""The runtime over a recording executor that replays recorded outputs: which argv run, in which
order, and which never run (no engine, no process)."""

from __future__ import annotations

import sys

import pytest

from valetkey_hookspecs import BoxSpec
from valetkey_hookspecs.errors import Conflict, InvalidInput, NotFound, RuntimeUnavailable
from valetkey_hookspecs.testing.box_runtime import BAD_IDS
from valetkey_runtime_apple.runtime import AppleRuntime, engine_problem

from .conftest import recorded

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_invalid_ids_run_nothing(recorded_runtime, executor, bad):
    with pytest.raises(InvalidInput):
        await recorded_runtime.create(BoxSpec(box_id=bad, image="alpine"))
    assert executor.calls == []


async def test_duplicate_id_is_refused_before_create(recorded_runtime, executor):
    executor.on("list", recorded("list.json"))
    with pytest.raises(Conflict, match="vk-one"):
        await recorded_runtime.create(BoxSpec(box_id="vk-one", image="alpine"))
    assert executor.verbs() == ["list"]


async def test_a_name_taken_by_an_unmanaged_container_is_refused_too(recorded_runtime, executor):
    executor.on("list", recorded("list.json"))
    with pytest.raises(Conflict):
        await recorded_runtime.create(BoxSpec(box_id="someones-db", image="alpine"))
    assert "create" not in executor.verbs()


async def test_max_boxes_is_checked_before_create(executor):
    runtime = AppleRuntime(binary=sys.executable, executor=executor, require_macos=False,
                           max_boxes=2)  # fmt: skip
    executor.on("list", recorded("list.json"))  # two managed boxes already
    with pytest.raises(Conflict, match="max_boxes"):
        await runtime.create(BoxSpec(box_id="vk-three", image="alpine"))
    assert executor.verbs() == ["list"]


async def test_bad_env_and_files_are_refused_before_anything_runs(recorded_runtime, executor):
    from valetkey_hookspecs import BoxFile

    with pytest.raises(InvalidInput):
        await recorded_runtime.create(BoxSpec(box_id="vk-x", image="a", env={"A": "x\ny"}))
    with pytest.raises(InvalidInput):
        await recorded_runtime.create(
            BoxSpec(box_id="vk-x", image="a", files=(BoxFile("rel", b""),))
        )
    with pytest.raises(InvalidInput):
        await recorded_runtime.create(BoxSpec(box_id="vk-x", image="a", memory_mib=0))
    assert executor.calls == []


async def test_list_and_get_show_managed_boxes_only(recorded_runtime, executor):
    executor.on("list", recorded("list.json"))
    assert [b.id for b in await recorded_runtime.list()] == ["vk-one", "vk-two"]
    executor.on("inspect", recorded("list.json").replace("vk-one", "zz"))  # any output...
    executor.on("inspect", recorded("inspect.json"))
    assert (await recorded_runtime.get("vk-one")).description == "first box"
    assert executor.calls[-1][1:] == ["inspect", "vk-one"]


async def test_unmanaged_and_unknown_containers_are_not_found(recorded_runtime, executor):
    unmanaged = recorded("list.json")
    executor.on("inspect", unmanaged)  # the array holds someones-db, unmanaged
    for call in (recorded_runtime.get, recorded_runtime.destroy, recorded_runtime.logs):
        with pytest.raises(NotFound):
            await call("someones-db")
    with pytest.raises(NotFound):
        await recorded_runtime.exec("someones-db", "true")
    assert set(executor.verbs()) == {"inspect"}  # nothing was stopped, deleted, run


async def test_inspect_not_found_error_and_empty_array_both_mean_not_found(
    recorded_runtime, executor
):
    executor.on("inspect", "", recorded("stop_not_found.txt"), code=1)
    with pytest.raises(NotFound):
        await recorded_runtime.get("vk-nope")
    assert await recorded_runtime.is_alive("vk-nope") is False
    executor.on("inspect", recorded("inspect_empty.json"))
    with pytest.raises(NotFound):
        await recorded_runtime.get("vk-nope")


async def test_is_alive_follows_the_status(recorded_runtime, executor):
    executor.on("inspect", recorded("list.json"))
    assert await recorded_runtime.is_alive("vk-one") is True
    assert await recorded_runtime.is_alive("vk-two") is False  # stopped


async def test_is_alive_raises_when_the_engine_is_unreachable(recorded_runtime, executor):
    executor.on("inspect", "", 'Error: internalError: "failed to connect to apiserver"', code=1)
    with pytest.raises(RuntimeUnavailable):
        await recorded_runtime.is_alive("vk-one")


async def test_destroy_stops_then_deletes(recorded_runtime, executor):
    executor.on("inspect", recorded("inspect.json"))
    await recorded_runtime.destroy("vk-one")
    assert executor.calls[1:] == [
        [sys.executable, "stop", "--signal", "SIGTERM", "--time", "10", "vk-one"],
        [sys.executable, "delete", "vk-one"],
    ]


async def test_destroy_of_a_container_removed_meanwhile_is_quiet(recorded_runtime, executor):
    executor.on("inspect", recorded("inspect.json"))
    executor.on("stop", "", recorded("stop_not_found.txt"), code=1)
    with pytest.raises(NotFound):
        await recorded_runtime.destroy("vk-one")


async def test_logs_are_tailed_and_ansi_stripped(recorded_runtime, executor):
    executor.on("inspect", recorded("inspect.json"))
    executor.on("logs", recorded("logs_ansi.txt"))
    text = await recorded_runtime.logs("vk-one", tail=3)
    assert "\x1b" not in text and "Visit https://example.com/login?code=abc" in text
    assert executor.calls[-1][1:] == ["logs", "-n", "3", "vk-one"]


async def test_write_stdin_without_a_held_process_is_a_conflict(recorded_runtime, executor):
    executor.on("inspect", recorded("inspect.json"))
    with pytest.raises(Conflict, match="cannot attach"):
        await recorded_runtime.write_stdin("vk-one", b"code\n")


async def test_engine_missing_is_runtime_unavailable(executor):
    runtime = AppleRuntime(binary="no-such-container-cli", executor=executor,
                           require_macos=False)  # fmt: skip
    with pytest.raises(RuntimeUnavailable, match="not on PATH"):
        await runtime.list()
    assert executor.calls == []


async def test_not_macos_is_runtime_unavailable(executor):
    if sys.platform == "darwin":
        pytest.skip("this is macOS")
    runtime = AppleRuntime(executor=executor)
    with pytest.raises(RuntimeUnavailable, match="macOS only"):
        await runtime.list()
    assert "macOS only" in (engine_problem() or "")
    assert executor.calls == []
