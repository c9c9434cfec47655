"""``valetkey run`` as a real process against a real daemon: the command's environment (proxy
URL with the run token, CA variables, no bypass variables), exit codes, signals passed on,
the run unregistered afterwards, traffic actually going through the proxy (a local upstream
the test starts) and ``valetkey proxy runs|log``."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from valetkey_proxy.client import running_client

pytestmark = pytest.mark.slow

SHOW_ENV = (
    "import json, os; print(json.dumps({k: os.environ.get(k) for k in ["
    "'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'NO_PROXY', 'no_proxy', "
    "'ALL_PROXY', 'SSL_CERT_FILE', 'REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'GIT_SSL_CAINFO', "
    "'NODE_EXTRA_CA_CERTS', 'VALETKEY_RUN_ID', 'KEEP_ME']}))"
)


def _runs(env):
    client = running_client(env.home)
    if client is None:
        return []
    with client:
        return client.list_runs()


def test_command_env_is_plumbed(env):
    env_vars = {**env.environ, "NO_PROXY": "*", "no_proxy": "*", "ALL_PROXY": "x", "KEEP_ME": "yes"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "valetkey",
            "run",
            "--run-id",
            "envtest",
            "--",
            sys.executable,
            "-c",
            SHOW_ENV,
        ],
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env.tmp,
    )
    env.remember()
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    url = seen["HTTPS_PROXY"]
    assert url.startswith("http://valetkey:") and url.rsplit(":", 1)[1].isdigit()
    token = url.split("valetkey:", 1)[1].split("@", 1)[0]
    assert len(token) == 64
    assert all(seen[k] == url for k in ("HTTP_PROXY", "http_proxy", "https_proxy"))
    assert seen["NO_PROXY"] is None and seen["no_proxy"] is None and seen["ALL_PROXY"] is None
    bundle = str(env.paths.ca / "bundle.pem")
    assert all(
        seen[k] == bundle
        for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")
    )
    assert seen["NODE_EXTRA_CA_CERTS"] == str(env.paths.ca / "ca.pem")
    assert seen["VALETKEY_RUN_ID"] == "envtest" and seen["KEEP_ME"] == "yes"
    assert _runs(env) == []  # unregistered when the command exited
    assert token not in result.stderr and token not in env.paths.log.read_text()


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 0", 0), ("exit 7", 7), ("kill -9 $$", 128 + 9), ("kill -TERM $$", 128 + 15)],
)
def test_exit_codes(env, script, code):
    result = env.cli("run", "--", "sh", "-c", script)
    assert result.returncode == code, result.stderr
    assert _runs(env) == []


def test_command_not_found_is_127(env):
    result = env.cli("run", "--", "no-such-command-valetkey")
    assert result.returncode == 127 and "command not found" in result.stderr
    assert _runs(env) == []


def test_bad_arguments_are_one_line_errors(env):
    result = env.cli("run")
    assert result.returncode == 2 and "give a command" in result.stderr
    result = env.cli("run", "--allow", "https://x.test", "--", "true")
    assert result.returncode != 0 and "expected host, *.domain or host:port" in result.stderr
    assert _runs(env) == []
    result = env.cli("run", "--grant", "github", "--", "true")
    assert result.returncode != 0 and "no github connection" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_passed_on_and_the_run_unregistered(env, sig):
    name = signal.Signals(sig).name.removeprefix("SIG")
    script = f'trap "echo got-{name}; exit 3" {name}; echo ready; while :; do sleep 0.05; done'
    proc = subprocess.Popen(
        [sys.executable, "-m", "valetkey", "run", "--run-id", "sig", "--", "sh", "-c", script],
        env=env.environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=env.tmp,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        env.remember()
        assert [r["run_id"] for r in _runs(env)] == ["sig"]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"got-{name}" in out, err
    assert proc.returncode == 3
    assert _runs(env) == []


def test_token_never_on_a_command_line(env):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "valetkey",
            "run",
            "--",
            "sh",
            "-c",
            'echo "$HTTPS_PROXY"; exec sleep 30',
        ],
        env=env.environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=env.tmp,
    )
    try:
        token = proc.stdout.readline().split("valetkey:", 1)[1].split("@", 1)[0]
        env.remember()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        assert token.encode() not in handle.read()
                except OSError:
                    continue
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


class _Upstream(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):
        _Upstream.seen.append((self.path, self.headers.get("Proxy-Authorization")))
        body = b"hello from upstream"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        return None


def test_traffic_goes_through_the_proxy_and_is_logged(env):
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    port = upstream.server_address[1]
    fetch = (
        "import urllib.request; "
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/things?x=1').read().decode())"
    )
    try:
        # this machine is off limits unless allowed (an agent must not reach local services)
        refused = env.cli("run", "--", sys.executable, "-c", fetch)
        assert refused.returncode != 0 and "407" in refused.stderr
        assert _Upstream.seen == []
        result = env.cli(
            "run",
            "--run-id",
            "traffic",
            "--allow",
            f"127.0.0.1:{port}",
            "--",
            sys.executable,
            "-c",
            fetch,
        )
    finally:
        upstream.shutdown()
        thread.join(5)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from upstream"
    assert _Upstream.seen == [("/things?x=1", None)]  # Proxy-Authorization never forwarded
    deadline = time.monotonic() + 5
    while True:
        logged = env.cli("proxy", "log", "traffic", "--json")
        if logged.returncode == 0 and logged.stdout.strip():
            break
        assert time.monotonic() < deadline, logged.stderr
        time.sleep(0.1)
    (entry,) = [json.loads(line) for line in logged.stdout.splitlines()]
    assert entry["method"] == "GET" and entry["status"] == 200
    assert entry["host"] == "127.0.0.1" and entry["path"] == "/things?x=1"
    human = env.cli("proxy", "log", "traffic", check=True).stdout
    assert f"GET http://127.0.0.1:{port}/things?x=1 200" in human
    missing = env.cli("proxy", "log", "nope")
    assert missing.returncode != 0 and "no request log" in missing.stderr


def test_proxy_runs_lists_without_tokens(env, daemon):
    reg = daemon.register_run({"owner": "ann", "run_id": "listed"})
    out = env.cli("proxy", "runs", "--json", check=True).stdout
    assert [r["run_id"] for r in json.loads(out)] == ["listed"]
    assert reg["auth_token"] not in out
    table = env.cli("proxy", "runs", check=True).stdout
    assert "listed" in table and "RUN" in table
