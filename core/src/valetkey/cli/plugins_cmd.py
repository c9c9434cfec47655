"""``valetkey plugins list|doctor|new``: what is installed, what is wrong, and a new plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cyclopts import App

from valetkey_hookspecs import ValetkeyError

from ..kernel import Kernel
from . import state
from .output import err, print_json, print_table

app = App(name="plugins", help="List, check and scaffold plugins.")


def _distributions() -> dict[str, tuple[str, str]]:
    """Entry point name → (distribution, version), for the listing only."""
    import importlib.metadata as md

    found: dict[str, tuple[str, str]] = {}
    for ep in md.entry_points(group="valetkey"):
        if ep.dist is not None:
            found.setdefault(ep.name, (ep.dist.name, ep.dist.version))
    return found


def plugin_rows(kernel: Kernel) -> list[dict[str, Any]]:
    """One dict per installed plugin: the data behind ``plugins list``."""
    dists = _distributions()
    selected: dict[str, str] = {}
    provides: dict[str, dict[str, list[str]]] = {}
    for kind in (
        "store",
        "secret_store",
        "sealer",
        "box_runtime",
        "notifier",
        "credential_provider",
        "broker",
        "response_transformer",
        "box_hook",
    ):
        for name, driver in kernel.drivers(kind).items():
            provides.setdefault(driver.plugin, {}).setdefault(kind, []).append(name)
        if kind in ("store", "secret_store", "sealer", "box_runtime", "broker"):
            try:
                driver = kernel.selected(kind)
            except ValetkeyError:  # no or ambiguous driver: 'plugins doctor' reports it
                continue
            selected[kind] = f"{driver.plugin}:{driver.name}"
    rows = []
    for record in kernel.plugins:
        dist, version = dists.get(record.name, (None, None))
        notes = getattr(record.obj, "VALETKEY_NOTES", None)
        rows.append(
            {
                "name": record.name,
                "distribution": dist,
                "version": version,
                "module": record.target,
                "kinds": list(record.kinds),
                "provides": provides.get(record.name, {}),
                "selected": sorted(
                    k for k, v in selected.items() if v.startswith(f"{record.name}:")
                ),
                "enabled": record.wanted,
                "loaded": record.loaded,
                "error": record.error,
                "description": record.description,
                "notes": notes,
            }
        )
    return rows


@app.command(name="list")
def list_(*, json: bool = False) -> int:
    """List installed plugins: distribution, version, kinds, enabled/selected, load error.

    Parameters
    ----------
    json
        Print a JSON array instead of a table.
    """
    kernel = state.kernel()
    rows = plugin_rows(kernel)
    if json:
        print_json(rows)
        return 0
    table = []
    for row in rows:
        status = "loaded" if row["loaded"] else ("disabled" if not row["enabled"] else "FAILED")
        if row["selected"]:
            status += " (selected: " + ", ".join(row["selected"]) + ")"
        table.append([row["name"], row["version"] or "-", ",".join(row["kinds"]) or "-", status])
    print_table(["PLUGIN", "VERSION", "KINDS", "STATUS"], table)
    for row in rows:
        if row["error"]:
            err(f"{row['name']}: {row['error']}")
    return 0


def doctor_problems() -> list[str]:
    """Every problem ``plugins doctor`` reports, loading the kernel tolerantly."""
    from valetkey_hookspecs import ValetkeyError

    from ..kernel import load

    try:
        kernel = load(tolerant=True)
    except ValetkeyError as exc:
        return [str(exc)]
    problems = kernel.problems + kernel.config_problems()
    for kind in ("store", "secret_store", "sealer"):
        try:
            kernel.selected(kind)
        except ValetkeyError as exc:
            problems.append(str(exc))
    if "box_runtime" in kernel.policy.select:
        try:
            kernel.selected("box_runtime")
        except ValetkeyError as exc:
            problems.append(str(exc))
    _ = kernel.connectors  # registration errors land in kernel.problems
    problems.extend(kernel.doctor())
    return list(dict.fromkeys(kernel.problems + problems))  # in order, without repeats


@app.command
def doctor(*, json: bool = False) -> int:
    """Check plugins and configuration; exit 1 with one line per problem.

    Parameters
    ----------
    json
        Print {"ok": bool, "problems": [...]} instead of lines.
    """
    problems = doctor_problems()
    if json:
        print_json({"ok": not problems, "problems": problems})
    elif problems:
        for problem in problems:
            err(problem)
    else:
        print("all plugins loaded and configured")
    return 1 if problems else 0


@app.command
def new(kind: str, name: str, *, dir: Path | None = None, force: bool = False) -> int:
    """Scaffold a third-party plugin that installs, loads and passes the conformance kit.

    Parameters
    ----------
    kind
        What the plugin provides: connector or notifier.
    name
        The plugin's short name (lower case, digits, dashes): becomes valetkey-NAME / valetkey_NAME.
    dir
        Where to create it (default: ./valetkey-NAME).
    force
        Write into an existing, non-empty folder.
    """
    from ..scaffold import scaffold

    target = scaffold(kind, name, dir, force=force)
    print(f"created {target}")
    print(f"next: pip install -e {target} && valetkey plugins list && pytest {target}")
    return 0
