"""Reading the catalog: the built-in TOML files, then the user's, cached per process.

The built-in catalog is parsed once per process. User folders are listed on every call (one
``listdir`` and a ``stat`` per file), and the merged catalog is rebuilt only when a file was
added, removed or changed since the last call, so problems are logged once, not on every read.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from valetkey_hookspecs import Connector

from .config import PLUGIN, ConnectorsConfig, current, extra_dirs, user_dir
from .schema import ConnectorFileError, parse_connector

log = logging.getLogger("valetkey.connectors")

#: the source recorded for a connector of the built-in catalog
BUILTIN = "built-in"
_MAX_CACHED = 8


@dataclass(frozen=True)
class Catalog:
    """Connectors by slug (in load order), where each came from, and every problem found."""

    connectors: Mapping[str, Connector]
    #: slug -> ``"built-in"`` or the path of the user file that defined it
    sources: Mapping[str, str]
    #: one line per problem, each naming the file (or folder) and the field
    problems: tuple[str, ...]


def parse_text(text: str, source: str, *, default_slug: str | None) -> Connector:
    """Parse one connector file's text; ``ConnectorFileError`` names what is wrong.

    :param source: how to name the file in messages (its path).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConnectorFileError([("", f"invalid TOML: {exc}")]) from None
    return parse_connector(data, default_slug=default_slug)


def _read(path: Path, source: str) -> tuple[Connector | None, list[str]]:
    """One file: its connector, or the problem lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, [f"{source}: not a UTF-8 text file"]
    except OSError as exc:
        return None, [f"{source}: cannot be read: {exc.strerror or exc}"]
    stem = path.name[: -len(".toml")] if path.name.endswith(".toml") else path.name
    try:
        return parse_text(text, source, default_slug=stem), []
    except ConnectorFileError as exc:
        return None, exc.lines(source)


@cache
def builtin() -> tuple[tuple[Connector, ...], tuple[str, ...]]:
    """The built-in catalog shipped in ``valetkey_connectors/catalog/``, and any problem (a
    problem there is a packaging bug; the tests keep it empty)."""
    folder = Path(__file__).parent / "catalog"
    found: list[Connector] = []
    problems: list[str] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml") or not entry.is_file():
            continue
        connector, lines = _read(entry, f"{BUILTIN} catalog {entry.name}")
        problems.extend(lines)
        if connector is not None:
            found.append(connector)
    return tuple(found), tuple(problems)


@dataclass(frozen=True)
class _Folder:
    path: Path
    configured: bool
    files: tuple[tuple[Path, int, int], ...]  # path, mtime_ns, size
    problem: str | None


def _scan(folder: Path, *, configured: bool) -> _Folder:
    """The ``*.toml`` files of a folder (hidden files skipped), with what identifies a version."""
    where = f"[plugin.{PLUGIN}] dirs: {folder}" if configured else str(folder)
    try:
        names = sorted(
            p for p in folder.iterdir() if p.name.endswith(".toml") and not p.name.startswith(".")
        )
    except FileNotFoundError:
        # the user's own folder is optional; a folder named in plugins.toml is not
        return _Folder(folder, configured, (), f"{where}: no such folder" if configured else None)
    except NotADirectoryError:
        return _Folder(folder, configured, (), f"{where}: not a folder")
    except OSError as exc:
        return _Folder(folder, configured, (), f"{where}: cannot be listed: {exc.strerror}")
    files = []
    for path in names:
        try:
            st = path.stat()
        except OSError:
            continue  # removed meanwhile
        if path.is_file():
            files.append((path, st.st_mtime_ns, st.st_size))
    return _Folder(folder, configured, tuple(files), None)


_catalogs: dict[tuple[object, ...], Catalog] = {}


def load(config: ConnectorsConfig | None = None) -> Catalog:
    """The catalog for ``config`` (default: the configuration in force).

    Sources in order, a later definition of a slug replacing an earlier one (logged at INFO):
    the built-in catalog (unless ``builtin = false``), ``<config dir>/connectors/*.toml``, then
    each folder of ``dirs``. A bad file is reported (WARNING, and in ``problems``) and skipped.
    """
    config = config if config is not None else current()
    folders = [_scan(user_dir(), configured=False)]
    folders += [_scan(path, configured=True) for path in extra_dirs(config)]
    key = (config.builtin, *folders)
    cached = _catalogs.get(key)
    if cached is not None:
        return cached
    catalog = _build(config, folders)
    if len(_catalogs) >= _MAX_CACHED:
        _catalogs.clear()
    _catalogs[key] = catalog
    return catalog


def _build(config: ConnectorsConfig, folders: list[_Folder]) -> Catalog:
    connectors: dict[str, Connector] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    if config.builtin:
        found, builtin_problems = builtin()
        problems.extend(builtin_problems)
        for item in found:
            connectors[item.slug] = item
            sources[item.slug] = BUILTIN
    for folder in folders:
        if folder.problem:
            problems.append(folder.problem)
        here: dict[str, Path] = {}
        for path, _, _ in folder.files:
            connector, lines = _read(path, str(path))
            problems.extend(lines)
            if connector is None:
                continue
            slug = connector.slug
            if slug in here:
                problems.append(
                    f"{path}: slug: {slug!r} is also defined by {here[slug].name} in the same "
                    "folder; that file is used and this one is skipped"
                )
                continue
            here[slug] = path
            if slug in sources:
                before = sources[slug]
                log.info(
                    "connector %r from %s overrides the %s",
                    slug,
                    path,
                    "built-in one" if before == BUILTIN else f"one from {before}",
                )
            connectors[slug] = connector
            sources[slug] = str(path)
    for line in problems:
        log.warning("%s", line)
    return Catalog(connectors=connectors, sources=sources, problems=tuple(problems))


def clear_cache() -> None:
    """Forget every catalog built so far (the built-in catalog stays parsed)."""
    _catalogs.clear()
