"""The box manager against a real dockerd: sessions, the login over stdin, exec, logs, destroy,
restore, the reaper and lifecycle hooks (plugin hooks and the executable bridge)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta

import pytest

from valetkey_boxes.manager import BoxManager, hash_token, manager_for
from valetkey_hookspecs import (
    BoxFile,
    BoxHookResult,
    BoxStatus,
    Conflict,
    InvalidInput,
    NotFound,
    hookimpl,
    utcnow,
)

pytestmark = pytest.mark.anyio


def containers(dockerd):
    client = dockerd.client()
    try:
        return sorted(c.name for c in client.containers.list(all=True))
    finally:
        client.close()


async def test_create_is_pending_with_an_auth_url_and_a_hashed_token(kernel, dockerd):
    manager = BoxManager(kernel)
    created = await manager.create("alpha", description="triage bot")
    assert created.auth_url == f"http://127.0.0.1:8760/auth/{created.token}"
    assert len(created.token) == 64
    session = await kernel.store.boxes.get("alpha")
    assert session.status is BoxStatus.PENDING and session.token_hash == hash_token(created.token)
    assert "creating" not in session.hook_state
    assert created.token not in json.dumps(created.session.hook_state)
    info = await manager.get("alpha")
    assert info["status"] == "pending" and info["state"] == "running"
    assert info["description"] == "triage bot"
    assert "token" not in info
    with pytest.raises(Conflict, match="waiting for its sign-in"):
        await manager.exec("alpha", "hostname")
    await manager.submit_code(created.token, "code-1")
    hostname = await manager.exec("alpha", "hostname")
    assert hostname.stdout.strip() == "alpha"
    assert "alpha" in containers(dockerd) or any("alpha" in c for c in containers(dockerd))
    await manager.destroy("alpha")


@pytest.mark.parametrize("bad", ["UPPER", "-x", "a/b", "x" * 64, "", "a_b"])
async def test_invalid_ids_are_refused_before_any_container_exists(kernel, dockerd, bad):
    before = containers(dockerd)
    with pytest.raises(InvalidInput, match="box id"):
        await BoxManager(kernel).create(bad)
    assert containers(dockerd) == before
    assert await kernel.store.boxes.list() == []


async def test_a_duplicate_id_is_refused_and_the_first_box_is_untouched(kernel, dockerd):
    manager = BoxManager(kernel)
    first = await manager.create("dup")
    before = containers(dockerd)
    with pytest.raises(Conflict, match="exists already"):
        await manager.create("dup")
    assert containers(dockerd) == before
    assert (await kernel.store.boxes.get("dup")).token_hash == hash_token(first.token)
    await manager.destroy("dup")


async def test_bad_requests_name_the_problem(kernel):
    manager = BoxManager(kernel)
    with pytest.raises(NotFound, match="no spoke named 'far'"):
        await manager.create("s1", spoke="far")
    with pytest.raises(InvalidInput, match="at most 500"):
        await manager.create("s1", description="x" * 501)
    with pytest.raises(InvalidInput, match="named twice"):
        await manager.create("s1", grants=["github", "github"])
    with pytest.raises(NotFound, match="no box 'ghost'"):
        await manager.destroy("ghost")
    with pytest.raises(NotFound, match="no box 'ghost'"):
        await manager.get("ghost")
    assert await kernel.store.boxes.list() == []


async def test_the_code_goes_to_the_login_on_stdin_and_the_box_becomes_ready(kernel):
    manager = BoxManager(kernel)
    created = await manager.create("login1")
    session = await manager.session_for_token(created.token)
    assert await _wait_login_url(manager, session) == (
        "https://login.example.test/device?session=abc"
    )
    with pytest.raises(InvalidInput, match="it was empty"):
        await manager.submit_code(created.token, "   ")
    with pytest.raises(NotFound, match="not valid"):
        await manager.submit_code("f" * 64, "code-123")
    assert (await kernel.store.boxes.get("login1")).status is BoxStatus.PENDING
    ready = await manager.submit_code(created.token, "code-4711-secret")
    assert ready.status is BoxStatus.READY
    assert ready.session_url == "https://session.example.test/s/42"
    with pytest.raises(Conflict, match="ready already"):
        await manager.submit_code(created.token, "code-again")
    stored = await kernel.store.boxes.get("login1")
    assert stored.status is BoxStatus.READY
    assert "code-4711-secret" not in repr(stored)
    # the box printed the code ("checking …"): the console is the box's, the manager's records
    # and audit never hold it
    audit = await kernel.store.audit.list(limit=50)
    assert "code-4711-secret" not in repr(audit)
    await manager.destroy("login1")


async def test_a_failed_login_is_an_error_the_person_can_retry(kernel):
    manager = BoxManager(kernel)
    created = await manager.create("login2")
    failed = await manager.submit_code(created.token, "bad-code-1")
    assert failed.status is BoxStatus.ERROR
    assert failed.error == "error: invalid code"
    assert "bad-code-1" not in (failed.error or "")
    again = await manager.submit_code(created.token, "good-code-2")  # the login asks again
    assert again.status is BoxStatus.READY and again.error is None
    await manager.destroy("login2")


async def test_destroy_while_the_box_is_created_elsewhere_is_refused(kernel):
    manager = BoxManager(kernel)
    assert await kernel.store.leases.acquire("box:busy", "another-process", 60)
    with pytest.raises(Conflict, match="is being created"):
        await manager.create("busy")
    with pytest.raises(Conflict, match="is being created"):
        await manager.destroy("busy")
    assert await kernel.store.boxes.list() == []


async def test_exec_logs_and_destroy(kernel, dockerd):
    manager = BoxManager(kernel)
    created = await manager.create("work")
    await manager.submit_code(created.token, "code-for-work-77")
    result = await manager.exec("work", "echo hi; echo oops >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "oops\n", 3)
    with pytest.raises(InvalidInput, match="give a shell command"):
        await manager.exec("work", "  ")
    logs = await manager.logs("work", 10)
    assert "to sign in" in logs
    # the login printed the code ("checking …"): what leaves the manager is redacted
    assert "checking [REDACTED]" in logs and "code-for-work-77" not in logs
    echoed = await manager.exec("work", "echo code-for-work-77")
    assert echoed.stdout == "[REDACTED]\n"
    with pytest.raises(InvalidInput, match="between 1 and 10000"):
        await manager.logs("work", 0)
    await manager.destroy("work")
    assert not any("work" in c for c in containers(dockerd))
    with pytest.raises(NotFound):
        await kernel.store.boxes.get("work")


async def test_restore_drops_sessions_whose_container_was_removed_by_hand(kernel, dockerd):
    manager = BoxManager(kernel)
    await manager.create("keep-me")
    await manager.create("lost")
    box = await manager.runtime.get("lost")
    client = dockerd.client()
    try:
        client.containers.get(box.container_id).remove(force=True)
    finally:
        client.close()
    # a session whose box is still being created (and younger than a minute) is left alone
    lost = await kernel.store.boxes.get("lost")
    await kernel.store.boxes.put(replace(lost, hook_state={**lost.hook_state, "creating": True}))
    assert await BoxManager(kernel).restore() == (["keep-me", "lost"], [])
    await kernel.store.boxes.put(lost)
    kept, dropped = await BoxManager(kernel).restore()  # as a fresh server would
    assert (kept, dropped) == (["keep-me"], ["lost"])
    assert [s.box_id for s in await kernel.store.boxes.list()] == ["keep-me"]
    await manager.destroy("keep-me")


async def test_the_reaper_destroys_stale_pending_boxes_and_keeps_ready_ones(kernel, dockerd):
    manager = BoxManager(kernel)
    stale = await manager.create("stale")
    ready = await manager.create("ready1")
    await manager.submit_code(ready.token, "good-code")
    old = utcnow() - timedelta(seconds=manager.config.auth_ttl + 5)
    for box_id in ("stale", "ready1"):
        session = await kernel.store.boxes.get(box_id)
        await kernel.store.boxes.put(replace(session, created_at=old))
    fresh = await manager.create("fresh")
    assert await manager.reap() == ["stale"]
    names = containers(dockerd)
    assert not any("stale" in c for c in names)
    assert {s.box_id for s in await kernel.store.boxes.list()} == {"ready1", "fresh"}
    assert stale.token and fresh.token
    await manager.destroy("ready1")
    await manager.destroy("fresh")


async def test_bad_exec_and_logs_input_changes_nothing(kernel):
    manager = BoxManager(kernel)
    created = await manager.create("limits")
    await manager.submit_code(created.token, "ok-code")
    with pytest.raises(InvalidInput, match="at most 16384 characters"):
        await manager.exec("limits", "x" * 16_385)
    with pytest.raises(InvalidInput, match="between 1 and 10000"):
        await manager.logs("limits", 10_001)
    for image, message in (
        ("  ", "no image"),
        ("--volume=/:/host", "not an image reference"),
        ("busybox latest", "not an image reference"),
    ):
        with pytest.raises(InvalidInput, match=message):
            await manager.create("img-bad", image=image)
    assert [s.box_id for s in await kernel.store.boxes.list()] == ["limits"]
    await manager.destroy("limits")


async def test_allowed_images_limit_what_boxes_run(make_kernel, dockerd):
    kernel = make_kernel(allowed_images=["valetkey-test/*"])
    async with kernel:
        manager = BoxManager(kernel)
        with pytest.raises(InvalidInput, match="is not allowed here"):
            await manager.create("other", image="ghcr.io/evil/box:1")
        await manager.create("fine", image=dockerd.image)
        await manager.destroy("fine")


async def test_list_shows_managed_boxes_only(kernel, dockerd):
    manager = BoxManager(kernel)
    await manager.create("listed")
    client = dockerd.client()
    try:
        outsider = client.containers.run(
            dockerd.image, ["sleep", "60"], detach=True, name="outsider"
        )
        listed = await manager.list_boxes()
        assert [b["box_id"] for b in listed] == ["listed"]
        with pytest.raises(NotFound):
            await manager.destroy("outsider")
        outsider.reload()
        assert outsider.status == "running"  # untouched
        outsider.remove(force=True)
    finally:
        client.close()
    await manager.destroy("listed")


# ---------------------------------------------------------------------- hooks


class Recorder:
    def __init__(self, fail_create=False):
        self.created, self.destroyed, self.fail_create = [], [], fail_create

    async def on_create(self, event):
        self.created.append(event.box_id)
        if self.fail_create:
            raise RuntimeError("hook says no")
        return BoxHookResult(
            files=(BoxFile("/etc/valetkey-hook.txt", b"from the hook\n", 0o640, 0, 0),),
            state={"ticket": f"t-{event.box_id}"},
        )

    async def on_destroy(self, event, state):
        self.destroyed.append((event.box_id, dict(state)))


class HookPlugin:
    def __init__(self, *hooks):
        self.hooks = hooks

    @hookimpl
    def valetkey_register_box_hooks(self, register):
        for i, hook in enumerate(self.hooks):
            register(f"h{i}", lambda ctx, hook=hook: hook)


async def test_plugin_hooks_inject_files_and_get_their_state_back(make_kernel):
    recorder = Recorder()
    kernel = make_kernel(extra_plugins={"hooks": HookPlugin(recorder)}, exec_before_ready=True)
    async with kernel:
        manager = BoxManager(kernel)
        await manager.create("hooked")
        result = await manager.exec(
            "hooked", "cat /etc/valetkey-hook.txt; stat -c '%a' /etc/valetkey-hook.txt"
        )
        assert result.stdout == "from the hook\n640\n"
        session = await kernel.store.boxes.get("hooked")
        assert session.hook_state["hooks"] == {"h0": {"ticket": "t-hooked"}}
        await manager.destroy("hooked")
        assert recorder.destroyed == [("hooked", {"ticket": "t-hooked"})]


async def test_a_failing_create_replays_the_destroy_of_hooks_that_ran(make_kernel, dockerd):
    first, second = Recorder(), Recorder(fail_create=True)
    kernel = make_kernel(extra_plugins={"hooks": HookPlugin(first, second)})
    async with kernel:
        before = containers(dockerd)
        with pytest.raises(Exception, match="hook says no"):
            await BoxManager(kernel).create("nohook")
        assert first.destroyed == [("nohook", {"ticket": "t-nohook"})]
        assert second.destroyed == []  # its create never finished
        assert containers(dockerd) == before
        assert await kernel.store.boxes.list() == []
        # a create that fails after the hooks (an image that does not exist) replays them too
        first.destroyed.clear()
        kernel2 = kernel
        only_first = BoxManager(kernel2)
        only_first.hooks = lambda: [("h0", first)]
        with pytest.raises(Exception, match=r"(?i)image|not found|no such"):
            await only_first.create("noimage", image="valetkey-test/missing:none")
        assert first.destroyed == [("noimage", {"ticket": "t-noimage"})]
        assert await kernel.store.boxes.list() == []


HOOK_SCRIPT = """#!/bin/sh
payload=$(cat)
case "$1" in
create)
  file=$(printf 'made by a program' | base64)
  printf '{"files":[{"path":"/etc/exec-hook","content_base64":"%s","mode":420}],' "$file"
  printf '"state":{"seen":"yes"}}'

  ;;
destroy)
  printf '%s' "$payload" > "$MARKER"
  ;;
esac
"""


async def test_executable_hooks_speak_json_on_stdin_and_stdout(make_kernel, tmp_path, monkeypatch):
    script = tmp_path / "hook.sh"
    script.write_text(HOOK_SCRIPT)
    script.chmod(0o755)
    marker = tmp_path / "destroyed.json"
    monkeypatch.setenv("MARKER", str(marker))
    kernel = make_kernel(hooks=[str(script)], exec_before_ready=True)
    async with kernel:
        manager = BoxManager(kernel)
        await manager.create("exechook")
        result = await manager.exec("exechook", "cat /etc/exec-hook")
        assert result.stdout == "made by a program"
        await manager.destroy("exechook")
    sent = json.loads(marker.read_text())
    assert sent["state"] == {"seen": "yes"} and sent["event"]["box_id"] == "exechook"


async def test_a_broken_executable_hook_aborts_the_create_with_its_reason(
    make_kernel, tmp_path, dockerd
):
    script = tmp_path / "broken.sh"
    script.write_text("#!/bin/sh\necho 'cannot reach the vault' >&2\nexit 4\n")
    script.chmod(0o755)
    kernel = make_kernel(hooks=[str(script)])
    async with kernel:
        before = containers(dockerd)
        with pytest.raises(Exception, match="exited with status 4: cannot reach the vault"):
            await BoxManager(kernel).create("broken")
        assert containers(dockerd) == before
        assert await kernel.store.boxes.list() == []


async def _wait_login_url(manager, session, timeout=10.0):
    import asyncio

    for _ in range(int(timeout / 0.1)):
        url = await manager.login_url(session)
        if url:
            return url
        await asyncio.sleep(0.1)
    return None


def test_hook_file_rules_are_checked(tmp_path):
    from valetkey_boxes.hooks import _file

    assert _file("h", 0, {"path": "/a", "content": "x"}).content == b"x"
    encoded = base64.b64encode(b"\x00\x01").decode()
    assert _file("h", 0, {"path": "/b", "content_base64": encoded}).content == b"\x00\x01"
    for raw, message in (
        ({"content": "x"}, "needs a 'path'"),
        ({"path": "rel", "content": "x"}, "must be absolute"),
        ({"path": "/a"}, "needs 'content'"),
        ({"path": "/a", "content_base64": "!!"}, "not base64"),
        ({"path": "/a", "content": "x", "mode": 99999}, "mode must be"),
    ):
        with pytest.raises(Exception, match=message):
            _file("h", 0, raw)


def test_output_after_follows_a_moving_tail_in_linear_time():
    from valetkey_boxes.login import output_after

    before = "".join(f"line {i}\n" for i in range(100))
    now = "".join(f"line {i}\n" for i in range(50, 100)) + "ready\n"
    assert output_after(before, now) == "ready\n"
    assert output_after(before, before + "more\n") == "more\n"
    assert output_after("old\n", "entirely new\n") == "entirely new\n"
    big = "".join(f"{i:06d}" + "x" * 16_000 + "\n" for i in range(2000))
    moved = big[len(big) // 2 :] + "done\n"
    assert output_after(big, moved) == "done\n"  # 2,000 lines of 16 KB: linear, not quadratic


class ReportingSpoke:
    """TEST DOUBLE of a remote spoke's runtime: ``list`` answers whatever it is told (a spoke
    that lies, or a slow one)."""

    name = "remote"

    def __init__(self, boxes, delay=0.0):
        self.boxes, self.delay = boxes, delay

    async def list(self):
        import asyncio as _asyncio

        await _asyncio.sleep(self.delay)
        return self.boxes

    async def logs(self, box_id, tail=200):
        import asyncio as _asyncio

        await _asyncio.sleep(self.delay)
        return "remote logs\n"


async def test_a_spoke_speaks_for_its_own_boxes_only_in_the_fleet_list(kernel):
    from valetkey_hookspecs import Box, BoxSession

    manager = BoxManager(kernel)
    await kernel.store.boxes.put(
        BoxSession(box_id="one", token_hash="a" * 64, image="img", runtime="remote", spoke="a")
    )
    honest = ReportingSpoke([Box(id="one", runtime="remote", image="img", state="running")])
    liar = ReportingSpoke(
        [
            Box(id="one", runtime="remote", image="img", state="exited"),  # a's box
            Box(id="phantom", runtime="remote", image="img", state="running"),  # no session
        ]
    )
    spokes = {"a": honest, "zz": liar}
    manager.spoke_runtime = spokes.__getitem__

    async def names():
        return ["a", "zz"]

    manager.spoke_names = names
    rows = {r["box_id"]: r for r in await manager.list_boxes()}
    assert rows["one"]["spoke"] == "a" and rows["one"]["state"] == "running"
    # a box nobody else claims may be reported by a spoke; a claimed one never by another
    assert rows["phantom"]["spoke"] == "zz"
    await kernel.store.boxes.delete("one")


async def test_a_stuck_spoke_does_not_hold_the_local_boxes_calls(kernel):
    import asyncio as _asyncio

    from valetkey_hookspecs import BoxSession

    manager = BoxManager(kernel)
    created = await manager.create("local1")
    await manager.submit_code(created.token, "code-ok")
    await kernel.store.boxes.put(
        BoxSession(box_id="far", token_hash="b" * 64, image="img", runtime="remote", spoke="slow")
    )
    slow = ReportingSpoke([], delay=30)
    manager.spoke_runtime = {"slow": slow}.__getitem__
    stuck = [_asyncio.ensure_future(manager.logs("far")) for _ in range(20)]  # > 16 slots
    await _asyncio.sleep(0.1)
    logs = await _asyncio.wait_for(manager.logs("local1"), 10)
    assert "to sign in" in logs
    for task in stuck:
        task.cancel()
    await kernel.store.boxes.delete("far")
    await manager.destroy("local1")


async def test_only_the_server_holding_the_reaper_lease_reaps(kernel):
    import asyncio as _asyncio

    from valetkey_boxes.service import REAPER_LEASE, reaper

    manager = manager_for(kernel)
    manager.config = replace(manager.config, reap_every=0.05)
    calls = []

    async def counted():
        calls.append(1)
        return []

    manager.reap = counted
    assert await kernel.store.leases.acquire(REAPER_LEASE, "another-server", 60)
    task = _asyncio.ensure_future(reaper(kernel))
    await _asyncio.sleep(0.3)
    assert calls == []  # another server holds the lease
    await kernel.store.leases.release(REAPER_LEASE, "another-server")
    await _asyncio.sleep(0.3)
    task.cancel()
    assert calls  # taken over once the lease was free
