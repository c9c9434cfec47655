"""The ``[plugin.sealer-local]`` table of plugins.toml."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LocalSealerConfig:
    """How the local sealer follows its key ring.

    ``ring_ttl``: seconds a sealer seals under the current key it knows before re-reading the
    ring from the secret store, so a long-running ``valetkey serve`` follows a rotation done by
    the CLI. Keep it well below the grace the CLI keeps old keys for (``valetkey vault
    rotate-kek --retire-grace``, 600 s by default).
    """

    #: seconds (0: re-read the ring before every seal)
    ring_ttl: float = 30.0

    def __post_init__(self) -> None:
        # ValueError: the kernel's validator turns it into a ConfigError naming the table
        ttl = self.ring_ttl
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not math.isfinite(ttl)
            or ttl < 0
        ):
            raise ValueError(f"ring_ttl must be a finite number of seconds >= 0, not {ttl!r}")
