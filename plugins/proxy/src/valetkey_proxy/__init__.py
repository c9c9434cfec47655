"""proxy: the credential-injecting proxy daemon and ``valetkey run``. An agent's requests go
through a local proxy that adds the real credential for the hosts a grant is bound to; the agent
only ever holds a placeholder.

Only hook implementations live here; everything else is imported when first used.
"""

from __future__ import annotations

from typing import Any

from valetkey_hookspecs import hookimpl

from .config import ProxyConfig

_COMMANDS = [
    (
        "valetkey_proxy.cli:proxy_app",
        "proxy",
        "The credential-injecting proxy daemon: start, stop, status, runs, request logs.",
    ),
    (
        "valetkey_proxy.cli:run",
        "run",
        "Run a command whose HTTP(S) traffic gets credentials it never sees.",
    ),
]


@hookimpl
def valetkey_config_schema() -> type[Any]:
    return ProxyConfig


@hookimpl
def valetkey_register_commands(app: Any) -> None:
    for target, name, help_text in _COMMANDS:
        app.command(target, name=name, help=help_text)


@hookimpl
def valetkey_register_response_transformers(register: Any) -> None:
    from .transformers import OAuthEndpointWorkaround, ResponseScrub

    register("response-scrub", lambda ctx: ResponseScrub())
    register("oauth-endpoint-workaround", lambda ctx: OAuthEndpointWorkaround())
