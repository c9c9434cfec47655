"""``valetkey plugins new KIND NAME``: render plugins/_template into a new plugin folder."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from valetkey_hookspecs import InvalidInput

KINDS = ("connector", "notifier")
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def template_root() -> Path:
    """The template folder: packaged beside this module, or plugins/_template in a checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "_template"
    if packaged.is_dir():
        return packaged
    for parent in here.parents:
        candidate = parent / "plugins" / "_template"
        if candidate.is_dir():
            return candidate
    raise InvalidInput("the plugin template is missing from this installation of valetkey")


def scaffold(kind: str, name: str, target: Path | None = None, *, force: bool = False) -> Path:
    """Create the plugin and return its folder; nothing is written when an input is bad."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown plugin kind {kind!r} (choose from: {', '.join(KINDS)})")
    if not NAME.match(name) or len(name) > 40:
        raise InvalidInput(
            f"invalid plugin name {name!r}: lower-case letters, digits and single dashes, "
            "starting with a letter (e.g. acme or acme-tools)"
        )
    module = "valetkey_" + name.replace("-", "_")
    values = {
        "name": name,
        "dist": f"valetkey-{name}",
        "module": module,
        "title": " ".join(part.capitalize() for part in name.split("-")),
        "cls": "".join(part.capitalize() for part in name.split("-")),
        "env": name.upper().replace("-", "_"),
        "kind": kind,
    }
    target = (target or Path.cwd() / values["dist"]).expanduser()
    if target.exists() and any(target.iterdir()) and not force:
        raise InvalidInput(f"{target} exists and is not empty (use --force to write into it)")
    root = template_root()
    rendered: dict[Path, str] = {}
    for layer in ("common", kind):
        base = root / layer
        for source in sorted(base.rglob("*")):
            if source.is_dir() or "__pycache__" in source.parts:
                continue
            relative = Path(
                *(module if p == "__module__" else p for p in source.relative_to(base).parts)
            )
            rendered[relative] = Template(source.read_text()).substitute(values)
    for relative, text in rendered.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target
