"""The daemon's lock info (``daemon.json``): which process serves this home, on which proxy port
and socket, since when, which version. Written once the daemon is listening, removed when it
stops. A file left behind by a killed daemon is *stale*: its pid is gone, or its socket does not
answer; :func:`is_stale` tells, and ``ensure_running`` then starts a new daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from valetkey_hookspecs.files import atomic_write


@dataclass(frozen=True)
class LockInfo:
    """What ``daemon.json`` says about the running daemon."""

    pid: int
    proxy_port: int
    sock_path: str
    started_at: str
    version: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to disk."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> LockInfo | None:
        """Parse; None when ``data`` is not a lock info (a torn or foreign file)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                pid=int(data["pid"]),
                proxy_port=int(data["proxy_port"]),
                sock_path=str(data["sock_path"]),
                started_at=str(data.get("started_at", "")),
                version=str(data.get("version", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def write(path: Path, info: LockInfo) -> None:
    """Write atomically, 0600."""
    atomic_write(path, json.dumps(info.to_json(), indent=2).encode() + b"\n")


def read(path: Path) -> LockInfo | None:
    """The lock info, or None when there is none (or it cannot be parsed)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    return LockInfo.from_json(data)


def remove(path: Path, pid: int | None = None) -> None:
    """Remove the file; with ``pid``, only if it still names that process (a successor may
    have written its own already)."""
    if pid is not None:
        info = read(path)
        if info is not None and info.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (zombies count as gone where we can tell)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # Linux: a zombie has exited already
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


def socket_answers(sock_path: str | Path, timeout: float = 1.0) -> bool:
    """True when something accepts connections on the Unix socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock_path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def is_stale(info: LockInfo) -> bool:
    """A lock info whose daemon is gone: the pid is dead or the socket does not answer."""
    return not pid_alive(info.pid) or not socket_answers(info.sock_path)
