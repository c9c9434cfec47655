"""Where the proxy daemon keeps its files: ``$VALETKEY_HOME/proxy/`` (0700).

- ``daemon.sock``: the management API (a Unix socket, 0600)
- ``daemon.lock``: the advisory ``flock`` that serialises "is a daemon up? else start one"
- ``daemon.json``: the running daemon's :class:`~valetkey_proxy.lockfile.LockInfo`
- ``runs.json``: registered runs (grant names and tokens, never a credential; 0600)
- ``daemon.log``: the daemon's stdout/stderr (it is started detached)
- ``ca/``: the local CA that signs intercepted hosts' certificates
- ``logs/``: per-run request logs, ``<run_id>.jsonl``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from valetkey_hookspecs.files import private_dir


@dataclass(frozen=True)
class ProxyPaths:
    """The daemon's file layout under one valetkey home."""

    root: Path

    @classmethod
    def for_home(cls, home: Path) -> ProxyPaths:
        """The layout under ``home`` (nothing is created)."""
        return cls(Path(home) / "proxy")

    @property
    def sock(self) -> Path:
        """The management API's Unix socket."""
        return self.root / "daemon.sock"

    @property
    def lock(self) -> Path:
        """The advisory lock file taken by ``ensure_running``."""
        return self.root / "daemon.lock"

    @property
    def info(self) -> Path:
        """The running daemon's lock info (JSON)."""
        return self.root / "daemon.json"

    @property
    def runs(self) -> Path:
        """Persisted runs."""
        return self.root / "runs.json"

    @property
    def log(self) -> Path:
        """The daemon's output."""
        return self.root / "daemon.log"

    @property
    def ca(self) -> Path:
        """The local CA's folder."""
        return self.root / "ca"

    @property
    def logs(self) -> Path:
        """Per-run request logs."""
        return self.root / "logs"

    def ensure(self) -> ProxyPaths:
        """Create the root and ``logs/`` as private (0700) folders; return self."""
        private_dir(self.root)
        private_dir(self.logs)
        return self
