"""The log notifier: structured, one line per notification, never a secret (notifications carry
none by contract; the kernel's redacting log filter is the second line of defence)."""

from __future__ import annotations

import json
import logging

from valetkey_hookspecs import ConfigError, Notification

#: notification kinds that need a person to act
ACTIONABLE = frozenset({"needs_reauth", "refresh_failed", "revoked"})


class LogNotifier:
    """Writes notifications to the ``valetkey.notify`` logger."""

    name = "log"

    def __init__(self, level: str = "WARNING", logger: logging.Logger | None = None) -> None:
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ConfigError(f"[plugin.notify-log] level: unknown logging level {level!r}")
        self._level = resolved
        self._log = logger or logging.getLogger("valetkey.notify")

    async def notify(self, notification: Notification) -> None:
        level = self._level if notification.kind in ACTIONABLE else logging.INFO
        fields = {
            "kind": notification.kind,
            "owner": notification.owner,
            "connection": notification.connection_id,
            "connector": notification.connector,
            "at": notification.at.isoformat(),
            **{f"data.{k}": v for k, v in notification.data.items()},
        }
        self._log.log(
            level,
            "%s %s",
            notification.message,
            json.dumps({k: v for k, v in fields.items() if v is not None}, default=str),
        )
