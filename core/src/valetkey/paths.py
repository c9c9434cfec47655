"""Where valetkey keeps state and looks for configuration.

State: ``$VALETKEY_HOME``, else ``$XDG_DATA_HOME/valetkey``, else ``~/.local/share/valetkey``.
Config: ``$VALETKEY_CONFIG``, else ``./plugins.toml``, else ``~/.config/valetkey/plugins.toml``
(``$XDG_CONFIG_HOME`` honoured); no file at all means the built-in defaults.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """The state folder (not created here)."""
    if env := os.environ.get("VALETKEY_HOME"):
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "valetkey"


def config_dir() -> Path:
    """The user's valetkey config folder."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "valetkey"


def find_config() -> Path | None:
    """The plugins.toml in force, or None for built-in defaults.

    ``$VALETKEY_CONFIG`` must name an existing file (an explicit path that is missing is an
    error the caller reports); the other candidates are optional.
    """
    if env := os.environ.get("VALETKEY_CONFIG"):
        return Path(env).expanduser()
    for candidate in (Path.cwd() / "plugins.toml", config_dir() / "plugins.toml"):
        if candidate.is_file():
            _check_trusted(candidate)
            return candidate
    return None


def _check_trusted(path: Path) -> None:
    """A config found by looking (not named by VALETKEY_CONFIG) decides which plugins run and
    can read files through ``$file``: it must be the user's own and writable by no one else."""
    from valetkey_hookspecs import ConfigError

    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"{path} is owned by another user or writable by others: refusing to use it "
            f"(chmod go-w {path}, or name a config with VALETKEY_CONFIG)"
        )
