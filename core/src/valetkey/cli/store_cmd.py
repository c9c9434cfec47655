"""``valetkey store migrate --to NAME``: copy every record from one store to another.

Typical use is outgrowing one machine: ``valetkey store migrate --to postgres`` copies the SQLite
store (the ``sqlite`` driver, configured by ``[plugin.store-sqlite]``) into the PostgreSQL store
configured by ``[plugin.store-postgres]``, then ``[select] store = "postgres"`` switches every
server over. Both stores are built from plugins.toml whatever ``[select]`` says.

The copying is the target store's: it must offer ``async import_records(source) -> dict`` (the
PostgreSQL store does). Records move as stored — sealed credentials stay sealed, nothing is
decrypted — and the target verifies counts and checksums, so the command is safe to re-run.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from cyclopts import App, Parameter

from valetkey_hookspecs import InvalidInput, PluginContext

from . import state
from .output import err, print_json, print_table

app = App(name="store", help="Move valetkey's records between stores (SQLite to PostgreSQL).")


def _build(kernel: Any, name: str, role: str) -> Any:
    """The store driver ``name`` built with its plugin's config (not opened)."""
    drivers = kernel.drivers("store")
    driver = drivers.get(name)
    if driver is None:
        known = ", ".join(sorted(drivers)) or "none"
        raise InvalidInput(f"--{role} {name!r}: no such store is installed (known: {known})")
    ctx = PluginContext(
        plugin=driver.plugin, config=kernel.plugin_config(driver.plugin), kernel=kernel
    )
    return driver.factory(ctx)


@app.command
def migrate(
    *,
    to: str,
    from_: Annotated[str, Parameter(name="--from")] = "sqlite",
    json: bool = False,
) -> int:
    """Copy every record from one store into another (sealed bytes as they are) and verify it.

    Stop the servers using the source store first. The copy is one transaction in the target,
    verified by row counts and a checksum of every table; run it again to check, or to finish
    an interrupted copy.

    Parameters
    ----------
    to
        The store driver to copy into, e.g. ``postgres``.
    from_
        The store driver to copy from.
    json
        Print the report as JSON.
    """
    if to == from_:
        raise InvalidInput(f"--to and --from are both {to!r}: nothing to copy")
    kernel = state.kernel()
    source = _build(kernel, from_, "from")
    target = _build(kernel, to, "to")
    importer = getattr(target, "import_records", None)
    if not callable(importer):
        raise InvalidInput(f"store {to!r} cannot import records from another store")

    async def run() -> dict[str, Any]:
        await source.open()
        try:
            await target.open()
            try:
                report: dict[str, Any] = await importer(source)
                return report
            finally:
                await target.close()
        finally:
            await source.close()

    report = anyio.run(run)
    if json:
        print_json(report)
        return 0
    tables = report.get("tables", {})
    print_table(
        ["TABLE", "ROWS", "COPIED", "SHA-256"],
        [[t, v["rows"], v["copied"], v["sha256"][:16]] for t, v in tables.items()],
    )
    err(
        f"verified: {sum(v['rows'] for v in tables.values())} records in {from_} and {to} "
        f"match (checksum {report.get('checksum', '')[:16]})"
    )
    return 0
