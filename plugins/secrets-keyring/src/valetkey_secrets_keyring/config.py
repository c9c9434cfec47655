"""The ``[plugin.secrets-keyring]`` table of plugins.toml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Backend = Literal["auto", "keyring", "file"]
BACKENDS: tuple[str, ...] = ("auto", "keyring", "file")


@dataclass(frozen=True)
class KeyringConfig:
    """Where valetkey keeps its own secrets.

    ``backend``: ``"auto"`` uses the OS keyring when one is usable and encrypted files under
    ``$VALETKEY_HOME/secrets/`` otherwise (with a warning); ``"keyring"`` insists on the OS keyring
    (an error when there is none); ``"file"`` always uses the encrypted files.
    """

    #: the keyring "service" entries are filed under (one per valetkey installation)
    service: str = "valetkey"
    #: "auto" | "keyring" | "file"
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        # ValueError: the kernel's validator turns it into a ConfigError naming the table
        if not isinstance(self.service, str) or not self.service.strip():
            raise ValueError("service must be a non-empty string")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {', '.join(map(repr, BACKENDS))}, not {self.backend!r}"
            )
