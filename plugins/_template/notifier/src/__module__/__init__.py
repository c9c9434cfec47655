"""${title}: a valetkey notifier plugin.

Receives every notification valetkey sends (a connection that needs re-authorization, a refresh
that keeps failing) and delivers it. This skeleton appends JSON lines to a file; replace
``deliver`` with your channel (chat, e-mail, pager).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from valetkey_hookspecs import hookimpl
from valetkey_hookspecs.files import private_dir


@dataclass(frozen=True)
class Config:
    """[plugin.${name}] in plugins.toml."""

    path: str = ""  # default: <VALETKEY_HOME>/${name}-notifications.jsonl


class ${cls}Notifier:
    name = "${name}"

    def __init__(self, path):
        self.path = Path(path)

    async def notify(self, notification):
        self.deliver(
            {
                "kind": notification.kind,
                "message": notification.message,
                "owner": notification.owner,
                "connection_id": notification.connection_id,
                "connector": notification.connector,
                "data": dict(notification.data),
                "at": notification.at.isoformat(),
            }
        )

    def deliver(self, payload):
        private_dir(self.path.parent)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(payload, default=str) + "\n")


@hookimpl
def valetkey_config_schema():
    return Config


@hookimpl
def valetkey_register_notifiers(register):
    def factory(ctx):
        config = ctx.config or Config()
        return ${cls}Notifier(config.path or ctx.home / "${name}-notifications.jsonl")

    register("${name}", factory)
