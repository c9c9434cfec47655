"""Issue 6's clustering acceptance end to end: a real ``valetkey serve`` as the hub
(``[plugin.boxes.hub] enabled``), two ``valetkey spoke run`` processes on this machine (each its
own ``$VALETKEY_HOME`` and config, both on the one private dockerd of tests/fixtures/dockerd.py,
kept apart by the ``valetkey.spoke`` label), driven through the official MCP client against the
hub: one-time join tokens (a reused and an expired one are refused), boxes created on each
spoke, ``list_boxes`` tagged by spoke, a killed spoke leaving the other usable and the listing
working, the killed spoke reconnecting healthy, and sessions of a disconnected spoke kept
across a hub restart. No join token or credential ever shows up in a process's output."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dockerd import docker_host, dockerd  # tests/fixtures (on pythonpath)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

__all__ = ["docker_host", "dockerd"]

LOGIN = (
    "echo 'Open https://login.example.test/device?session=abc to sign in'; read code; "
    "echo valetkey-ready; exec sleep 3600"
)
CODE = "fleet-oauth-code-never-in-chat"


def sign_in(auth_url: str) -> None:
    """The auth page of a box on a spoke: the code goes hub → spoke → the box's stdin."""
    deadline = time.monotonic() + 20
    while "login.example.test" not in (page := httpx.get(auth_url)).text:
        assert time.monotonic() < deadline, page.text
        time.sleep(0.2)
    field = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    done = httpx.post(auth_url, data={"csrf": field, "code": CODE}, cookies=page.cookies)
    assert done.status_code == 200 and "is ready" in done.text, done.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``valetkey serve`` (the hub) in a subprocess; its output is kept for the checks."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Server:
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "valetkey", "serve", "--port", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy(),
        )
        out.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "valetkey serve did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        assert "Traceback" not in self.log.read_text(), self.log.read_text()


async def call(client, tool, **args):
    result = await client.call_tool(tool, args)
    if result.is_error:
        return result.content[0].text
    return result.structured_content


def hub_config(path: Path, port: int, image: str) -> None:
    path.write_text(f"""
[plugin.boxes]
default_image = "{image}"
public_url = "http://127.0.0.1:{port}"
[plugin.boxes.login."*"]
command = ["sh", "-c", {json.dumps(LOGIN)}]
ready_timeout = 15.0
[plugin.boxes.hub]
enabled = true
heartbeat = 1.0

[plugin.runtime-docker]
stop_timeout = 1
""")


def spoke_config(path: Path, image: str) -> None:
    path.write_text(f"""
[plugin.boxes.spoke]
images = ["{image}"]

[plugin.runtime-docker]
stop_timeout = 1
""")


class Spoke:
    """One ``valetkey spoke run`` process with its own home and config."""

    def __init__(self, root: Path, name: str, hub_url: str, image: str) -> None:
        self.name, self.hub_url = name, hub_url
        self.home = root / f"spoke-{name}"
        self.config = root / f"spoke-{name}.toml"
        self.log = root / f"spoke-{name}.log"
        spoke_config(self.config, image)
        self.env = {
            **os.environ,
            "VALETKEY_HOME": str(self.home),
            "VALETKEY_CONFIG": str(self.config),
        }
        self.proc: subprocess.Popen[str] | None = None

    def start(self, token: str | None = None) -> Spoke:
        args = ["spoke", "run", "--hub", self.hub_url, "--name", self.name]
        if token is not None:
            args.append("--token-stdin")
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "valetkey", *args],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        out.close()
        assert self.proc.stdin is not None
        self.proc.stdin.write((token or "") + "\n")
        self.proc.stdin.close()
        return self

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_connected(self, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.output().count("connected to") < count:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def cli(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "valetkey", *args],
        capture_output=True,
        text=True,
        env=env or os.environ.copy(),
        input=input,
        timeout=60,
    )


def mint(ttl: str = "1h") -> str:
    made = cli("spoke", "token", "create", "--ttl", ttl, "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    assert token.startswith("vkjoin_")
    return token


async def spokes_by_name(client) -> dict[str, dict]:
    return {s["name"]: s for s in (await call(client, "list_spokes"))["result"]}


async def wait_spoke(client, name: str, connected: bool, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = (await spokes_by_name(client)).get(name)
        if found is not None and found["connected"] is connected:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.2)


async def test_two_spokes_enroll_serve_boxes_survive_a_kill_and_a_hub_restart(
    dockerd, docker_host, tmp_path, monkeypatch, isolated
):
    from mcp import Client

    port = free_port()
    config = tmp_path / "hub.toml"
    hub_config(config, port, dockerd.image)
    monkeypatch.setenv("VALETKEY_CONFIG", str(config))
    hub = Server(port, tmp_path / "hub.log").start()
    a = Spoke(tmp_path, "spoke-a", hub.url, dockerd.image)
    b = Spoke(tmp_path, "spoke-b", hub.url, dockerd.image)
    reuse = Spoke(tmp_path, "spoke-c", hub.url, dockerd.image)
    late = Spoke(tmp_path, "spoke-d", hub.url, dockerd.image)
    secrets_seen: list[str] = []
    try:
        token_a, token_b, expired = mint(), mint(), mint("1s")
        secrets_seen += [token_a, token_b, expired, CODE]
        a.start(token_a).wait_connected()
        b.start(token_b).wait_connected()
        # a used token and an expired one are refused, and the spoke stops (no retry loop)
        assert reuse.start(token_a).wait_exit() != 0
        assert "refused the join token" in reuse.output()
        time.sleep(1.2)
        assert late.start(expired).wait_exit() != 0
        assert "refused the join token" in late.output()
        listed = json.loads(cli("spoke", "token", "list", "--json").stdout)
        states = sorted((t["state"], t["used_by"]) for t in listed)
        assert states == [("expired", None), ("used", "spoke-a"), ("used", "spoke-b")]
        assert not any(tok in json.dumps(listed) for tok in secrets_seen)

        async with Client(f"{hub.url}/mcp") as client:
            spokes = await spokes_by_name(client)
            assert spokes["local"]["connected"] and spokes["spoke-a"]["connected"]
            assert spokes["spoke-b"]["connected"] and "spoke-c" not in spokes
            made_a = await call(client, "create_box", box_id="on-a", spoke="spoke-a")
            made_b = await call(client, "create_box", box_id="on-b", spoke="spoke-b")
            assert made_a["status"] == made_b["status"] == "pending", (made_a, made_b)
            sign_in(made_a["auth_url"])
            sign_in(made_b["auth_url"])
            assert (await call(client, "get_box", box_id="on-a"))["status"] == "ready"
            # the spoke re-checks the allow-list itself
            refused = await call(
                client, "create_box", box_id="bad-image", image="evil/x:1", spoke="spoke-a"
            )
            assert isinstance(refused, str) and "not allowed on spoke 'spoke-a'" in refused
            for box in ("on-a", "on-b"):
                ran = await call(client, "exec_box", box_id=box, command="hostname")
                assert ran["stdout"].strip() == box and ran["exit_code"] == 0
            rows = {r["box_id"]: r for r in (await call(client, "list_boxes"))["result"]}
            assert rows["on-a"]["spoke"] == "spoke-a" and rows["on-b"]["spoke"] == "spoke-b"
            assert rows["on-a"]["state"] == rows["on-b"]["state"] == "running"
            assert (await spokes_by_name(client))["spoke-a"]["box_count"] == 1

            # each spoke's containers carry its label; neither sees the other's
            engine = dockerd.client()
            try:
                labels = {
                    c.labels.get("valetkey.box-id"): c.labels.get("valetkey.spoke")
                    for c in engine.containers.list(all=True)
                }
            finally:
                engine.close()
            assert labels["on-a"] == "spoke-a" and labels["on-b"] == "spoke-b"

            # kill spoke a: b stays usable, listing works and reports a
            a.kill()
            await wait_spoke(client, "spoke-a", connected=False)
            ran = await call(client, "exec_box", box_id="on-b", command="echo still")
            assert ran["stdout"] == "still\n"
            rows = {r["box_id"]: r for r in (await call(client, "list_boxes"))["result"]}
            assert rows["on-b"]["state"] == "running"
            assert (
                rows["on-a"]["state"] == "unknown"
                and "not connected" in rows["on-a"]["spoke_error"]
            )
            down = await call(client, "exec_box", box_id="on-a", command="true")
            assert isinstance(down, str) and "not connected" in down

            # a comes back with its saved credential (no token) and is healthy again
            a.start()
            a.wait_connected(count=2)
            back = await wait_spoke(client, "spoke-a", connected=True)
            assert back["last_seen"] is not None
            ran = await call(client, "exec_box", box_id="on-a", command="hostname")
            assert ran["stdout"].strip() == "on-a"

        # the hub restarts while b is down: b's sessions stay; a reconnects by itself
        b.stop()
        hub.stop()
        hub.start()
        async with Client(f"{hub.url}/mcp") as client:
            await wait_spoke(client, "spoke-a", connected=True, timeout=40)
            rows = {r["box_id"]: r for r in (await call(client, "list_boxes"))["result"]}
            assert rows["on-b"]["state"] == "unknown" and rows["on-b"]["spoke"] == "spoke-b"
            assert rows["on-a"]["state"] == "running"
            b.start()
            await wait_spoke(client, "spoke-b", connected=True)
            rows = {r["box_id"]: r for r in (await call(client, "list_boxes"))["result"]}
            assert rows["on-b"]["state"] == "running"
            for box in ("on-a", "on-b"):
                assert (await call(client, "destroy_box", box_id=box))["destroyed"] is True
            assert [r["box_id"] for r in (await call(client, "list_boxes"))["result"]] == []
    finally:
        for spoke in (a, b, reuse, late):
            spoke.kill()
        hub.stop()
    engine = dockerd.client()
    try:
        assert not [c for c in engine.containers.list(all=True) if "on-" in c.name]
    finally:
        engine.close()
    # the credential is in the spoke's secret store (no keyring here: encrypted files), never
    # in plaintext on disk and never in any output; spoke.toml (0600) names the spoke only
    import tomllib

    from valetkey.kernel import load
    from valetkey.policy import load_policy

    enrolled = tomllib.loads((a.home / "spoke.toml").read_text())
    assert set(enrolled) == {"hub_url", "name", "spoke_id"}
    assert (a.home / "spoke.toml").stat().st_mode & 0o777 == 0o600
    spoke_kernel = load(policy=load_policy(a.config), home=a.home)
    credential = spoke_kernel.secret_store.get(f"valetkey-spoke:{enrolled['spoke_id']}")
    assert credential and credential.startswith("vksc_")
    on_disk = b"".join(p.read_bytes() for p in a.home.rglob("*") if p.is_file())
    assert credential.encode() not in on_disk
    secrets_seen.append(credential)
    outputs = [s.output() for s in (a, b, reuse, late)] + [hub.log.read_text()]
    assert not any(secret in text for secret in secrets_seen for text in outputs)
