"""The conformance kit, and the runtime's process handling, against a FAKE ``container`` program
(``fake_container.py``: state in a folder, processes in a busybox chroot). This is not Apple's
engine: it checks that the runtime drives a CLI of that shape correctly, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess

import anyio
import pytest

from valetkey_hookspecs import BoxFile, BoxSpec
from valetkey_hookspecs.errors import Conflict
from valetkey_hookspecs.testing.box_runtime import BoxRuntimeContract
from valetkey_runtime_apple.runtime import AppleRuntime

pytestmark = pytest.mark.skipif(
    shutil.which("busybox") is None
    or subprocess.run(["unshare", "-r", "-m", "true"], check=False).returncode != 0,
    reason="the fake container CLI needs busybox and unprivileged user namespaces",
)

IMAGE = "fake/busybox"


class TestAppleRuntimeContractOnFakeCli(BoxRuntimeContract):
    @pytest.fixture
    def runtime(self, fake_runtime):
        return fake_runtime

    @pytest.fixture
    def image(self):
        return IMAGE

    @pytest.fixture
    def unmanaged_container(self, fake_cli):
        async def create(name: str) -> None:
            done = subprocess.run(
                [fake_cli.binary, "create", "--name", name, "--label", "team=other", IMAGE,
                 "sleep", "600"],
                capture_output=True, check=True,
            )  # fmt: skip
            assert done.returncode == 0
            subprocess.run([fake_cli.binary, "start", name], capture_output=True, check=True)

        return create


@pytest.mark.anyio
async def test_env_values_never_reach_argv_and_the_env_file_is_gone(fake_runtime, fake_cli):
    spec = BoxSpec(box_id="vk-env", image=IMAGE, command=("sh", "-c", "sleep 600"),
                   env={"VK_TOKEN": "s3cret-value"})  # fmt: skip
    await fake_runtime.create(spec)
    argvs = fake_cli.argv_log()
    assert not any("s3cret-value" in part for argv in argvs for part in argv)
    create = next(argv for argv in argvs if argv[0] == "create")
    env_file = create[create.index("--env-file") + 1]
    assert not __import__("os").path.exists(env_file)
    assert (await fake_runtime.exec("vk-env", 'echo "$VK_TOKEN"')).stdout == "s3cret-value\n"
    await fake_runtime.destroy("vk-env")


@pytest.mark.anyio
async def test_gated_command_starts_after_files_are_there(fake_runtime):
    files = (BoxFile("/etc/vk/config", b"ready\n", mode=0o640),)
    spec = BoxSpec(box_id="vk-gate", image=IMAGE, files=files,
                   command=("sh", "-c", "cat /etc/vk/config; sleep 600"))  # fmt: skip
    await fake_runtime.create(spec)
    for _ in range(150):
        if "ready" in await fake_runtime.logs("vk-gate"):
            break
        await anyio.sleep(0.1)
    assert "ready" in await fake_runtime.logs("vk-gate")
    await fake_runtime.destroy("vk-gate")


@pytest.mark.anyio
async def test_exec_timeout_is_a_result(fake_runtime):
    await fake_runtime.create(BoxSpec(box_id="vk-slow", image=IMAGE,
                                      command=("sh", "-c", "sleep 600")))  # fmt: skip
    result = await fake_runtime.exec("vk-slow", "echo started; sleep 30", timeout=1)
    assert result.exit_code == 124
    assert result.stderr.endswith("... [timed out after 1s]")
    assert result.stdout == "started\n"
    await fake_runtime.destroy("vk-slow")


@pytest.mark.anyio
async def test_stdin_is_reachable_only_from_the_creating_runtime(fake_runtime):
    await fake_runtime.create(BoxSpec(box_id="vk-stdin", image=IMAGE,
                                      command=("sh", "-c", "cat; sleep 600")))  # fmt: skip
    other = AppleRuntime(binary="container", require_macos=False)
    with pytest.raises(Conflict, match="cannot attach"):
        await other.write_stdin("vk-stdin", b"x\n")
    await fake_runtime.write_stdin("vk-stdin", b"one\n")
    await fake_runtime.close()  # ends the attachment, not the box
    assert await other.is_alive("vk-stdin")
    with pytest.raises(Conflict):
        await fake_runtime.write_stdin("vk-stdin", b"two\n")
    await other.destroy("vk-stdin")
    assert not await other.is_alive("vk-stdin")


@pytest.mark.anyio
async def test_a_failed_start_leaves_no_container(fake_runtime, fake_cli):
    from valetkey_hookspecs.errors import PluginError

    with pytest.raises(PluginError):
        await fake_runtime.create(BoxSpec(box_id="vk-bad", image="no/such-image"))
    listed = subprocess.run([fake_cli.binary, "list", "--all", "--format", "json"],
                            capture_output=True, check=True)  # fmt: skip
    assert json.loads(listed.stdout) == []
