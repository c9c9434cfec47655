"""``valetkey connectors list|show``: the kernel's whole catalog (every plugin's connectors).

Imported only when a ``connectors`` command runs, inside the valetkey command line, so it may use
the kernel's CLI helpers (imported in the functions, as the CLI's own modules do).
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from cyclopts import App, Parameter

from valetkey_hookspecs import Connector

from .render import connector_to_dict, detail_lines, rate_text

app = App(name="connectors", help="List and inspect connectors.")

AuthName = Literal["oauth2", "api_key", "basic"]


def _catalog() -> list[tuple[Connector, str | None]]:
    """The kernel's connectors, each with its source when this plugin loaded it."""
    from valetkey.cli import state

    from .loader import load

    ours = load()
    rows = []
    for connector in state.kernel().connectors.list():
        mine = ours.connectors.get(connector.slug)
        rows.append((connector, ours.sources[connector.slug] if mine is connector else None))
    return rows


def _hosts(connector: Connector, shown: int = 3) -> str:
    """The injection hosts for a table cell: a few, then how many more (``--json`` has all)."""
    if connector.injection is None:
        return "-"
    hosts = connector.injection.hosts
    if len(hosts) <= shown:
        return ", ".join(hosts)
    return ", ".join(hosts[: shown - 1]) + f", +{len(hosts) - shown + 1} more"


@app.command(name="list")
def list_(
    *,
    json: bool = False,
    type_: Annotated[AuthName | None, Parameter(name="--type")] = None,
) -> int:
    """List every connector: slug, name, auth type, injected hosts, rate profile.

    Parameters
    ----------
    json
        Print a JSON array (every field of every connector) instead of a table.
    type_
        Only connectors of this auth type.
    """
    from valetkey.cli.output import print_json, print_table

    rows = [(c, s) for c, s in _catalog() if type_ is None or c.auth.type.value == type_]
    if json:
        print_json([connector_to_dict(c, s) for c, s in rows])
        return 0
    print_table(
        ["SLUG", "NAME", "AUTH", "HOSTS", "RATE"],
        [
            [
                c.slug,
                c.name,
                c.auth.type.value,
                _hosts(c),
                rate_text(c.rate),
            ]
            for c, _ in rows
        ],
    )
    return 0


@app.command
def show(slug: str, /, *, json: bool = False) -> int:
    """Show every field of one connector.

    Parameters
    ----------
    slug
        The connector's slug (see 'valetkey connectors list').
    json
        Print a JSON object instead of text.
    """
    from valetkey.cli import state
    from valetkey.cli.output import print_json

    connector = state.kernel().connectors.get(slug)  # NotFound: one line, exit 1
    source = next((s for c, s in _catalog() if c is connector), None)
    if json:
        print_json(connector_to_dict(connector, source))
        return 0
    rows = detail_lines(connector, source)
    width = max(len(label) for label, _ in rows)
    sys.stdout.writelines(f"{label.ljust(width)}  {value}".rstrip() + "\n" for label, value in rows)
    return 0
