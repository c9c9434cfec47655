"""The relay end to end with real processes on 127.0.0.1: ``valetkey relay host``, ``valetkey
serve``, ``valetkey relay attach`` + ``valetkey relay serve``; the official MCP client lists and
calls tools through ``/relay/<id>/mcp`` and gets what it gets from the local ``/mcp``; the host
is stopped and restarted and the machine reconnects by itself; a wrong machine token makes
``attach`` fail with the Unauthorized message while the previous credential still loads."""

from __future__ import annotations

import html
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import run_valetkey

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


class Proc:
    """A background ``valetkey`` process whose stderr is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "valetkey", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._buffer = b""

    def _pump(self, timeout: float) -> None:
        assert self.popen.stderr is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.popen.stderr, selectors.EVENT_READ)
            if not selector.select(timeout):
                return
        chunk = os.read(self.popen.stderr.fileno(), 65536)
        if not chunk:
            if self.popen.poll() is None:
                time.sleep(timeout)
            return
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(line.decode(errors="replace") for line in complete)

    def wait_for(self, pattern: str, timeout: float = 30.0, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                if match := re.search(pattern, line):
                    return match
            if time.monotonic() > deadline or self.popen.poll() is not None:
                self._pump(0.1)
                raise AssertionError(
                    f"no {pattern!r} (rc={self.popen.poll()}):\n" + "\n".join(self.lines)
                )
            self._pump(0.1)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        while self.popen.stderr is not None and not self.popen.stderr.closed:
            rest = self.popen.stderr.read()
            self.lines.extend(rest.decode(errors="replace").splitlines())
            self.popen.stderr.close()
        return self.popen.returncode


def env_for(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VALETKEY_CONFIG"}
    env.update(
        VALETKEY_HOME=str(base / "home"),
        XDG_CONFIG_HOME=str(base / "config"),
        XDG_CACHE_HOME=str(base / "cache"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    return env


def start_host(env, cwd, port=0) -> tuple[Proc, str]:
    host = Proc(["relay", "host", "--port", str(port)], env, cwd)
    url = host.wait_for(r"valetkey relay host on (http://127\.0\.0\.1:\d+)").group(1)
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=2).raise_for_status()
            return host, url
        except httpx.TransportError:
            assert time.monotonic() < deadline, "relay host does not answer"
            time.sleep(0.05)


async def tools_and_call(url, token=None):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        tools = (await client.list_tools()).tools
        result = await client.call_tool("valetkey_status", {})
        return tools, result


async def test_relay_end_to_end(tmp_path):
    host_dir, machine_dir = tmp_path / "host", tmp_path / "machine"
    host_dir.mkdir()
    machine_dir.mkdir()
    host_env, machine_env = env_for(host_dir), env_for(machine_dir)
    procs: list[Proc] = []
    try:
        host, host_url = start_host(host_env, host_dir)
        procs.append(host)
        page = httpx.post(f"{host_url}/connect", data={"label": "e2e"}, timeout=10)
        base, machine_token = html.unescape(
            re.search(r"<pre id=attach-line>([^<]*)</pre>", page.text).group(1)
        ).split()
        relay_id = base.rstrip("/").rsplit("/", 1)[1]
        made = run_valetkey(["relay", "token", "create", relay_id, "--json"], host_env, host_dir)
        assert made.returncode == 0, made.stderr
        access = json.loads(made.stdout)["token"]

        local = Proc(["serve", "--port", "0"], machine_env, machine_dir)
        procs.append(local)
        local_url = local.wait_for(r"serving on (http://127\.0\.0\.1:\d+)").group(1)

        attached = run_valetkey(
            ["relay", "attach", "--url", base, "--token-stdin"],
            machine_env,
            machine_dir,
            stdin=machine_token + "\n",
        )
        assert attached.returncode == 0, attached.stderr
        relay = Proc(["relay", "serve"], machine_env, machine_dir)
        procs.append(relay)
        relay.wait_for(rf"relay {relay_id}: serving \d+ MCP tools at {re.escape(base)}mcp")

        relayed_tools, relayed = await tools_and_call(f"{base}mcp", access)
        local_tools, direct = await tools_and_call(f"{local_url}/mcp")
        assert relayed_tools == local_tools
        assert "valetkey_status" in {t.name for t in relayed_tools}
        assert not relayed.is_error
        assert relayed.structured_content == direct.structured_content
        assert relayed.content == direct.content

        # the host goes away and comes back on the same port: the machine reconnects by itself
        port = int(host_url.rsplit(":", 1)[1])
        assert host.stop() == 0
        mark = len(relay.lines)
        relay.wait_for(r"reconnecting in \d+s", start=mark)
        host, host_url = start_host(host_env, host_dir, port)
        procs.append(host)
        relay.wait_for(rf"relay {relay_id}: serving \d+ MCP tools", timeout=40, start=mark)
        _tools, again = await tools_and_call(f"{base}mcp", access)
        assert again.structured_content == direct.structured_content
        retries = [line for line in relay.lines[mark:] if "reconnecting in" in line]
        delays = [int(re.search(r"reconnecting in (\d+)s", r).group(1)) for r in retries]
        assert delays == sorted(delays) and delays[0] == 1  # exponential backoff from 1 s

        # a wrong machine token: attach fails, the previous credential still loads
        before = (machine_dir / "config" / "valetkey" / "relay.toml").read_bytes()
        wrong = run_valetkey(
            ["relay", "attach", "--url", base, "--token-stdin"],
            machine_env,
            machine_dir,
            stdin="vkm_not_the_right_token_at_all\n",
        )
        assert wrong.returncode == 1
        assert "the relay rejected the machine token (HTTP 401)" in wrong.stderr
        assert "re-run 'valetkey relay connect'" in wrong.stderr
        assert "vkm_not_the_right_token_at_all" not in wrong.stderr
        assert (machine_dir / "config" / "valetkey" / "relay.toml").read_bytes() == before
        status = json.loads(
            run_valetkey(["relay", "status", "--json"], machine_env, machine_dir).stdout
        )
        assert (status["relay_id"], status["token"]) == (
            relay_id,
            machine_token[:4] + "...********",
        )
        _tools, still = await tools_and_call(f"{base}mcp", access)
        assert not still.is_error

        # secrets stay out of the logs of every process
        assert relay.stop() == 0
        everything = "\n".join(line for p in procs for line in p.lines)
        for secret in (machine_token, access):
            assert secret not in everything
        assert "Traceback" not in everything
    finally:
        for proc in procs:
            proc.stop()
