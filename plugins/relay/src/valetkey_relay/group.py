"""The ``valetkey relay`` command group, shared by the two relay plugins.

cyclopts cannot register one sub-app name twice, and users should not have to know which
distribution a relay command comes from: ``relay connect|attach|status|revoke|serve`` (this
plugin) and ``relay host`` / ``relay token`` (``valetkey-relay-server``) all live under
``valetkey relay``. Whichever plugin's ``valetkey_register_commands`` runs first creates the
group; the other adds its commands to it. The group itself is a cheap ``App``; its commands are
registered by import path, so ``valetkey --help`` imports none of them.
"""

from __future__ import annotations

from typing import Any

NAME = "relay"
HELP = "Serve this machine's MCP tools through a public relay, or host one."


def relay_group(app: Any) -> Any:
    """The ``relay`` sub-app of the root ``app``, created on first use."""
    from cyclopts import App

    if NAME in app:
        return app[NAME]
    group = App(name=NAME, help=HELP)
    app.command(group)
    return group
