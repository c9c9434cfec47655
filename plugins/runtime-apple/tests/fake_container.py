"""A FAKE ``container`` CLI for tests on Linux — not Apple's engine, and no claim to behave like it
beyond the argv and output shapes the runtime relies on (see recorded/README.md).

State lives in ``$FAKE_CONTAINER_STATE``: one folder per container with ``config.json`` (the
``ContainerConfiguration`` shape of recorded/list.json), a busybox root file system, the main
process's pid and its stdio log. Every call appends its argv to ``argv.jsonl``. Processes run in
that root through ``unshare -r -m --root`` (an unprivileged user + mount namespace and a chroot),
so absolute paths, file modes and the env file behave as inside a container. Only the image
``fake/busybox`` exists.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_CONTAINER_STATE"])
IMAGE = "fake/busybox"
BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(f"Error: {message}\n")
    sys.exit(code)


def not_found(cid: str) -> str:
    return f'(cause: "notFound: "container with ID {cid} not found"")'


def folder(cid: str) -> Path:
    return STATE / "containers" / cid


def load(cid: str) -> dict:
    path = folder(cid) / "config.json"
    if not path.exists():
        fail(f'notFound: "container with ID {cid} not found"')
    return json.loads(path.read_text())


def pid_of(cid: str) -> int | None:
    path = folder(cid) / "pid"
    if not path.exists():
        return None
    text = path.read_text().strip()
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return None if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X") else pid


def printable(cid: str) -> dict:
    config = load(cid)
    return {
        "status": "running" if pid_of(cid) else "stopped",
        "configuration": config,
        "networks": [],
    }


def environment(config: dict) -> dict[str, str]:
    env = {"PATH": "/bin", "HOME": "/root"}
    for item in config["initProcess"]["environment"]:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def in_root(cid: str, argv: list[str]) -> list[str]:
    # a UTS namespace too: the box id is the hostname, as the engine sets it from the id
    root = f"--root={folder(cid) / 'rootfs'}"
    gate = 'hostname "$0" && exec "$@"'
    # as root (CI containers) no user namespace: uid/gid of injected files are then real
    user = [] if os.geteuid() == 0 else ["-r"]
    return ["unshare", *user, "-m", "-u", root, "--wd=/", "/bin/sh", "-c", gate, cid, *argv]


def cmd_create(args: list[str]) -> None:
    name, labels, env, cpus, memory, interactive = None, {}, [], 4, 1024, False
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "--name":
            name = args.pop(0)
        elif flag == "--label":
            key, _, value = args.pop(0).partition("=")
            labels[key] = value
        elif flag == "--cpus":
            cpus = int(args.pop(0))  # the real CLI takes an integer too
        elif flag == "--memory":
            memory = int(args.pop(0).rstrip("M"))
        elif flag == "--network":
            args.pop(0)
        elif flag == "--interactive":
            interactive = True
        elif flag == "--env-file":
            for line in Path(args.pop(0)).read_text().splitlines():
                if line and not line.startswith("#"):
                    env.append(line)
        else:
            fail(f"fake container: unknown flag {flag}", 64)
    image, command = args[0], args[1:] or ["sh"]
    if image != IMAGE:
        fail(f'notFound: "image {image} not found"')
    assert name is not None
    if folder(name).exists():
        fail(f'exists: "container with id {name} already exists"')
    root = folder(name) / "rootfs"
    (root / "bin").mkdir(parents=True)
    for sub in ("tmp", "etc", "root"):
        (root / sub).mkdir()
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    config = {
        "id": name,
        "image": {"reference": image},
        "labels": labels,
        "initProcess": {
            "executable": command[0],
            "arguments": command[1:],
            "environment": ["PATH=/bin", *env],
            "workingDirectory": "/",
            "terminal": False,
            "interactive": interactive,
        },
        "resources": {"cpus": cpus, "memoryInBytes": memory * 1024 * 1024},
        "metadata": {"createdAt": time.time() - 978307200},
    }
    (folder(name) / "config.json").write_text(json.dumps(config))
    print(name)


def cmd_start(args: list[str]) -> None:
    interactive = "--interactive" in args
    cid = args[-1]
    config = load(cid)
    if pid_of(cid):
        if interactive:
            fail('invalidArgument: "attach is currently unsupported on already running containers"')
        print(cid)
        return
    process = config["initProcess"]
    log = open(folder(cid) / "stdio.log", "ab")  # noqa: SIM115
    child = subprocess.Popen(
        in_root(cid, [process["executable"], *process["arguments"]]),
        stdin=None if interactive else subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=environment(config),
        start_new_session=True,
    )
    # written whole (temp file + rename): a concurrent 'inspect' never reads it half-written
    tmp = folder(cid) / "pid.tmp"
    tmp.write_text(str(child.pid))
    tmp.replace(folder(cid) / "pid")
    if not interactive:
        print(cid)
        return
    sys.exit(child.wait())


def cmd_exec(args: list[str]) -> None:
    interactive = False
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "--interactive":
            interactive = True
        elif flag in ("--uid", "--gid"):
            args.pop(0)  # the fake is root inside its namespace anyway
    cid, argv = args[0], args[1:]
    config = load(cid)
    if not pid_of(cid):
        fail(f'invalidState: "container {cid} is not running"')
    child = subprocess.Popen(
        in_root(cid, argv),
        stdin=None if interactive else subprocess.DEVNULL,
        env=environment(config),
        start_new_session=True,
    )

    def forward(signum: int, _frame: object) -> None:  # as the real CLI forwards signals
        os.killpg(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    sys.exit(child.wait())


def cmd_logs(args: list[str]) -> None:
    cid = args[-1]
    load(cid)
    count = int(args[args.index("-n") + 1]) if "-n" in args else None
    path = folder(cid) / "stdio.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = [line for line in text.splitlines() if line]
    for line in lines[-count:] if count else ([] if count == 0 else lines):
        print(line)


def kill(cid: str, grace: float) -> None:
    pid = pid_of(cid)
    if not pid:
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_of(cid):
        time.sleep(0.05)
    if pid_of(cid):
        os.killpg(pid, signal.SIGKILL)
        while pid_of(cid):
            time.sleep(0.02)


def cmd_stop(args: list[str]) -> None:
    cid = args[-1]
    if not folder(cid).exists():
        fail('internalError: "failed to stop container" ' + not_found(cid))
    grace = float(args[args.index("--time") + 1]) if "--time" in args else 5.0
    kill(cid, grace)
    print(cid)


def cmd_delete(args: list[str]) -> None:
    cid = args[-1]
    if not folder(cid).exists():
        fail('internalError: "failed to delete container" ' + not_found(cid))
    if pid_of(cid):
        if "--force" not in args:
            fail(f'invalidState: "container {cid} is running"')
        kill(cid, 0)
    shutil.rmtree(folder(cid))
    print(cid)


def main() -> None:
    args = sys.argv[1:]
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "argv.jsonl", "a") as record:
        record.write(json.dumps(args) + "\n")
    command = args.pop(0) if args else ""
    if command == "system" and args[:1] == ["status"]:
        print("apiserver is running")
    elif command in ("list", "ls"):
        base = STATE / "containers"
        ids = sorted(p.name for p in base.iterdir()) if base.exists() else []
        print(json.dumps([printable(cid) for cid in ids]))
    elif command == "inspect":
        print(json.dumps([printable(cid) for cid in args if folder(cid).exists()]))
    elif command == "create":
        cmd_create(args)
    elif command == "start":
        cmd_start(args)
    elif command == "exec":
        cmd_exec(args)
    elif command == "logs":
        cmd_logs(args)
    elif command == "stop":
        cmd_stop(args)
    elif command in ("delete", "rm"):
        cmd_delete(args)
    else:
        fail(f"fake container: unsupported command {command!r}", 64)


if __name__ == "__main__":
    main()
