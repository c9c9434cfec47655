"""${title}: a valetkey connector plugin.

Registers the ${title} connector: how to obtain its credential (here an API key read from stdin or
a prompt, never argv) and how the proxy injects it into requests to its hosts.
"""

from valetkey_hookspecs import AuthSpec, AuthType, Connector, Injection, RateProfile, hookimpl

CONNECTORS = (
    Connector(
        slug="${name}",
        name="${title}",
        description="${title} API (API key)",
        auth=AuthSpec(type=AuthType.API_KEY),
        injection=Injection(
            hosts=("api.${name}.example",),
            header="Authorization",
            format="Bearer {token}",
            env_var="${env}_API_KEY",
        ),
        rate=RateProfile(requests=60, per_seconds=60),
    ),
)


@hookimpl
def valetkey_register_connectors(register):
    for connector in CONNECTORS:
        register(connector)
