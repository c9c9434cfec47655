"""The proxy's commands: ``valetkey proxy daemon|start|stop|status|runs|log`` and the top-level
``valetkey run [--grant X]... [--allow HOST]... [--strict] [--owner O] -- CMD ARGS``.

``valetkey run`` starts the daemon if needed, registers a run, and runs CMD with its traffic
going through the proxy: ``HTTP(S)_PROXY`` carries the run token (in the environment only, never
on a command line), the local CA is trusted through the usual variables, and each grant's
placeholder is set (``GITHUB_TOKEN=vkph_…``). Signals are passed on to CMD; when it exits the
run is unregistered and CMD's exit status returned (128+N when a signal N ended it).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from cyclopts import App

from valetkey_hookspecs import InvalidInput, NotFound, ValetkeyError

proxy_app = App(name="proxy", help="The credential-injecting proxy daemon: start, stop, inspect.")

_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
#: variables that would send traffic around the proxy (or elsewhere): removed from CMD's env
_BYPASS = ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
_BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")
_FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def _home() -> Path:
    from valetkey.cli import state

    return Path(state.kernel().home)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def default_owner() -> str:
    """The owner a CLI user acts as: ``$VALETKEY_OWNER``, else the OS user name (the broker's
    rule, repeated here so the proxy does not import the broker plugin)."""
    return os.environ.get("VALETKEY_OWNER") or getpass.getuser()


# ---------------------------------------------------------------------- proxy …


@proxy_app.command
def daemon() -> int:
    """Run the proxy daemon in the foreground (``valetkey run`` and ``proxy start`` start it in
    the background for you)."""
    import logging

    from valetkey.cli import state

    from .daemon import run_daemon

    if not os.environ.get("VALETKEY_LOG_LEVEL"):
        logging.getLogger("valetkey.proxy").setLevel(logging.INFO)
    run_daemon(state.kernel())
    return 0


def _status(home: Path) -> dict[str, Any] | None:
    from .client import running_client

    client = running_client(home)
    if client is None:
        return None
    with client:
        health = client.health()
    health["running"] = True
    health["sock_path"] = str(client.sock_path)
    return health


def _say_status(health: dict[str, Any]) -> None:
    sys.stdout.write(
        f"proxy daemon {health.get('version', '?')} running: pid {health.get('pid')}, "
        f"proxy on 127.0.0.1:{health.get('proxy_port')}, {health.get('run_count')} run(s), "
        f"since {health.get('started_at')}\n"
    )
    for failure in health.get("restore_failures") or []:
        sys.stdout.write(f"  not restored: run {failure.get('run_id')}: {failure.get('error')}\n")


@proxy_app.command
def start(*, json: bool = False) -> int:
    """Start the daemon in the background unless it is running.

    Parameters
    ----------
    json
        Print the daemon's health as JSON.
    """
    from .client import ensure_running

    with ensure_running(_home()) as client:
        health = client.health()
    health["running"] = True
    if json:
        _print_json(health)
    else:
        _say_status(health)
    return 0


@proxy_app.command
def stop(*, json: bool = False, timeout: float = 15.0) -> int:
    """Stop the daemon gracefully (its runs are saved and restored when it starts again).

    Parameters
    ----------
    json
        Print ``{"stopped": bool, "pid": ...}``.
    timeout
        Seconds to wait for it to exit.
    """
    from . import lockfile
    from .client import running_client

    client = running_client(_home())
    if client is None:
        if json:
            _print_json({"stopped": False, "running": False})
        else:
            sys.stdout.write("proxy daemon is not running\n")
        return 0
    with client:
        pid = int(client.health().get("pid", 0))
        client.shutdown()
    deadline = time.monotonic() + timeout
    while lockfile.pid_alive(pid):
        if time.monotonic() > deadline:
            raise ValetkeyError(f"the proxy daemon (pid {pid}) did not stop within {timeout:g} s")
        time.sleep(0.05)
    if json:
        _print_json({"stopped": True, "pid": pid})
    else:
        sys.stdout.write(f"proxy daemon (pid {pid}) stopped\n")
    return 0


@proxy_app.command
def status(*, json: bool = False) -> int:
    """Is the daemon running, on which port, with how many runs (exit 1 when not running).

    Parameters
    ----------
    json
        Print the daemon's health as JSON (``{"running": false}`` when it is not running).
    """
    health = _status(_home())
    if health is None:
        if json:
            _print_json({"running": False})
        else:
            sys.stdout.write("proxy daemon is not running\n")
        return 1
    if json:
        _print_json(health)
    else:
        _say_status(health)
    return 0


@proxy_app.command
def runs(*, json: bool = False) -> int:
    """List the daemon's registered runs (no tokens, no credentials).

    Parameters
    ----------
    json
        Print JSON.
    """
    from valetkey.cli.output import print_table

    from .client import running_client

    client = running_client(_home())
    items: list[dict[str, Any]] = []
    if client is not None:
        with client:
            items = client.list_runs()
    if json:
        _print_json(items)
        return 0
    if not items:
        sys.stdout.write("no runs registered\n")
        return 0
    print_table(
        ["RUN", "OWNER", "GRANTS", "POLICY", "CONTAINER", "REGISTERED"],
        [
            [
                r.get("run_id"),
                r.get("owner"),
                ",".join(r.get("grants") or []) or "-",
                r.get("network_policy"),
                r.get("container_id") or "-",
                r.get("registered_at"),
            ]
            for r in items
        ],
    )
    return 0


def _log_line(entry: Mapping[str, Any]) -> str:
    ts = entry.get("ts")
    when = (
        datetime.fromtimestamp(float(ts), UTC).strftime("%H:%M:%S.%f")[:-3]
        if isinstance(ts, int | float)
        else "-"
    )
    port = entry.get("port")
    scheme = entry.get("scheme")
    host = str(entry.get("host", "?"))
    default = {"http": 80, "https": 443}.get(str(scheme))
    if port and port != default:
        host = f"{host}:{port}"
    parts = [
        when,
        str(entry.get("method", "?")),
        f"{scheme or 'http'}://{host}{entry.get('path', '')}",
        str(entry.get("status", "?")),
        f"{entry.get('bytes_in', 0)}B",
        f"{entry.get('duration_ms', 0)}ms",
    ]
    if entry.get("rule"):
        parts.append(str(entry["rule"]))
    if entry.get("error"):
        parts.append(f"error={entry['error']}")
    return " ".join(parts)


@proxy_app.command(name="log")
def log_cmd(run: str, *, follow: bool = False, json: bool = False) -> int:
    """Show a run's request log (injected values appear as [REDACTED]).

    Parameters
    ----------
    run
        The run id (see ``valetkey proxy runs``), or the path of a ``.jsonl`` log.
    follow
        Keep printing new requests until interrupted.
    json
        Print the raw JSON lines.
    """
    from .paths import ProxyPaths
    from .reqlog import follow_log, resolve

    path = resolve(ProxyPaths.for_home(_home()).logs, run)
    if not follow and not path.exists():
        raise NotFound(f"no request log for run {run!r} (looked for {path})")
    try:
        for entry in follow_log(path, follow=follow):
            line = json_dumps(entry) if json else _log_line(entry)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    return 0


def json_dumps(entry: Mapping[str, Any]) -> str:
    """One compact JSON line."""
    return json.dumps(entry, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------- valetkey run


def child_env(base: Mapping[str, str], registration: Mapping[str, Any]) -> dict[str, str]:
    """CMD's environment: ``base`` with the proxy, the CA and the run's placeholders set, and
    the variables that would bypass the proxy removed."""
    # no bypass of the proxy, and no way back to valetkey itself: CMD must not find the daemon's
    # socket or the vault through VALETKEY_HOME / VALETKEY_CONFIG (it runs as the same user, so
    # this is a guard against accidents and naive prompt injection, not a sandbox: use a box)
    env = {k: v for k, v in base.items() if k not in _BYPASS and not k.startswith("VALETKEY_")}
    host = str(registration.get("proxy_host") or "127.0.0.1")
    if ":" in host:
        host = f"[{host}]"
    url = f"http://valetkey:{registration['auth_token']}@{host}:{registration['proxy_port']}"
    for name in _PROXY_VARS:
        env[name] = url
    bundle, cert = registration.get("ca_bundle"), registration.get("ca_cert")
    if bundle:
        for name in _BUNDLE_VARS:
            env[name] = str(bundle)
    if cert:
        env["NODE_EXTRA_CA_CERTS"] = str(cert)
    for name, value in (registration.get("env") or {}).items():
        env[str(name)] = str(value)
    env["VALETKEY_RUN_ID"] = str(registration.get("run_id", ""))
    return env


def _terminal_foreground() -> bool:
    """True when our process group is a terminal's foreground group: then Ctrl-C (SIGINT) and
    Ctrl-\\ (SIGQUIT) reach CMD from the terminal itself and must not be sent twice."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
    return False


def run_child(command: list[str], env: Mapping[str, str]) -> int:
    """Run ``command``, passing signals on; its exit status (128+N for signal N)."""
    try:
        proc = subprocess.Popen(command, env=dict(env))  # noqa: S603 - the user's own command
    except FileNotFoundError:
        sys.stderr.write(f"valetkey: error: command not found: {command[0]}\n")
        return 127
    except PermissionError:
        sys.stderr.write(f"valetkey: error: cannot execute {command[0]}\n")
        return 126
    from_terminal = _terminal_foreground()

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGINT, signal.SIGQUIT) and from_terminal:
            return  # the terminal sent it to CMD too
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def run(
    *command: str,
    grant: list[str] | None = None,
    allow: list[str] | None = None,
    strict: bool = False,
    owner: str | None = None,
    run_id: str | None = None,
    scrub: bool = False,
    substitute_anywhere: bool = False,
    mcp: list[str] | None = None,
    aws_role: str | None = None,
    aws_region: str = "us-east-1",
) -> int:
    """Run a command with its HTTP(S) traffic going through the credential-injecting proxy.

    The command sees a placeholder for each grant (e.g. GITHUB_TOKEN), never the credential:
    the proxy adds the real one to requests for the grant's hosts. Its exit status is
    returned; signals are passed on to it.

    Parameters
    ----------
    command
        The command and its arguments, after ``--``.
    grant
        A connector slug (github) or a connection id of the owner; repeatable.
    allow
        A host pattern the command may reach (api.example.com, *.example.com, host:port);
        repeatable. Without --strict every host is reachable except this machine (127.0.0.1,
        localhost) and link-local addresses (cloud metadata): allow those here. Granted hosts
        are always allowed.
    strict
        Block every host that is neither granted nor allowed (the answer names the rule).
    owner
        Whose connections the grants name (default: $VALETKEY_OWNER or your user name).
    run_id
        A name for the run (letters, digits, . _ -); a random one by default.
    scrub
        Replace the real credential by the placeholder in responses from granted hosts (JSON
        and text up to 512 KiB), for APIs that echo what they were sent.
    substitute_anywhere
        Swap placeholders for the real value in the path, query and body too, not only in
        headers (for APIs that take the key as a parameter; an API that stores or echoes what it
        is sent could then hand the real value back).
    mcp
        NAME=URL: a remote MCP server the command reaches at $VALETKEY_MCP_<NAME>_URL (with
        its run token as "Authorization: Bearer"); a server named like a grant gets that
        grant's credential; repeatable.
    aws_role
        An IAM role ARN to assume with the aws grant; the command's AWS SDK reads short-lived
        credentials from the proxy (AWS_CONTAINER_CREDENTIALS_FULL_URI).
    aws_region
        The STS region for --aws-role.
    """
    if not command:
        raise InvalidInput("give a command to run after --: valetkey run [--grant X] -- CMD ARGS")
    who = owner or default_owner()
    if not _OWNER.match(who):
        raise InvalidInput(f"invalid owner {who!r}")
    from .client import DaemonUnavailable, ensure_running

    spec: dict[str, Any] = {
        "owner": who,
        "grants": list(grant or []),
        "network_policy": "strict" if strict else "permissive",
        "network_allow": list(allow or []),
    }
    if run_id:
        spec["run_id"] = run_id
    if scrub:
        spec["scrub"] = True
    if substitute_anywhere:
        spec["substitution"] = "anywhere"
    servers = []
    for item in mcp or []:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise InvalidInput(f"--mcp {item!r}: expected NAME=URL")
        server = {"name": name, "url": url}
        if name in spec["grants"]:
            server["grant"] = name
        servers.append(server)
    if servers:
        spec["mcp_servers"] = servers
    if aws_role:
        if "aws" not in spec["grants"]:
            spec["grants"].append("aws")
        spec["aws"] = {"role_arn": aws_role, "region": aws_region}
    from .runs import process_started

    spec["client_pid"] = os.getpid()
    started = process_started(os.getpid())
    if started is not None:
        spec["client_started"] = started
    # a SIGTERM/SIGHUP between registering and starting CMD must still unregister (SIGKILL
    # cannot be caught: the daemon's liveness check removes a run whose process is gone)
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with ensure_running(_home()) as client:
            registration = client.register_run(spec)
            token = str(registration["auth_token"])
            try:
                return run_child(list(command), child_env(os.environ, registration))
            finally:
                try:
                    client.unregister_run(token)
                except (NotFound, DaemonUnavailable) as exc:  # the daemon restarted or left
                    sys.stderr.write(f"valetkey: warning: could not unregister the run: {exc}\n")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
