"""A cache of the root ``valetkey --help`` text, so the commonest first command does not pay for
importing cyclopts, rich and every plugin (~250 ms) when nothing changed.

The key covers everything the text depends on: valetkey's version, the interpreter, every
``sys.path`` entry's mtime (installing or removing a distribution changes its folder), the config
file in force and the plugin-selection environment, and the terminal width. Each entry also
records the source files of the plugins that add commands, with their mtimes, so editing an
editable plugin invalidates it too. The cache lives in ``$XDG_CACHE_HOME/valetkey`` and holds
no secret (help text only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

from .. import __version__

_ENV = ("VALETKEY_PLUGINS", "VALETKEY_DISABLE_PLUGINS", "VALETKEY_CONFIG", "XDG_CONFIG_HOME")


def _stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_mtime_ns}:{st.st_size}"


def width() -> int:
    """The width help is rendered at."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
        return columns or os.get_terminal_size(sys.stdout.fileno()).columns
    except (ValueError, OSError):
        return 80


def _key() -> str:
    from ..paths import config_dir

    parts = [__version__, sys.executable, str(width())]
    parts += [f"{p}={_stat(p)}" for p in sys.path if p]
    parts += [f"{v}={os.environ.get(v, '')}" for v in _ENV]
    for candidate in (Path.cwd() / "plugins.toml", config_dir() / "plugins.toml"):
        parts.append(f"{candidate}={_stat(str(candidate))}")
    if env := os.environ.get("VALETKEY_CONFIG"):
        parts.append(f"{env}={_stat(env)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "valetkey" / f"help-{_key()}.json"


def lookup() -> str | None:
    """The cached help text, if still valid."""
    try:
        entry = json.loads(_path().read_text())
    except (OSError, ValueError):
        return None
    if any(_stat(path) != stamp for path, stamp in entry.get("sources", {}).items()):
        return None
    text = entry.get("text")
    return text if isinstance(text, str) else None


def store(text: str, sources: list[str]) -> None:
    """Remember ``text``; ``sources`` are files whose change must invalidate it."""
    path = _path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"text": text, "sources": {s: _stat(s) for s in sources}}))
        os.replace(tmp, path)
