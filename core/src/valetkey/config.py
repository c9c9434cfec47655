"""Plugin configuration: ``$env`` / ``$file`` references, validation against the schema a plugin
declares, and a redacted view for ``valetkey config show``.

A value ``{ "$env" = "NAME" }`` is replaced by the environment variable NAME, and
``{ "$file" = "path" }`` by the file's content (trailing newline stripped; a relative path is
relative to the config file). Both are how secrets stay out of plugins.toml.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from valetkey_hookspecs import ConfigError
from valetkey_hookspecs.redaction import REDACTED, SENSITIVE_KEY, redact_text


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("$env", "$file")


def resolve_refs(value: Any, *, where: str, base: Path | None) -> Any:
    """Replace every ``$env`` / ``$file`` reference in ``value``; errors name ``where``."""
    if _is_ref(value):
        kind, target = next(iter(value.items()))
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{where}: {kind} needs a non-empty string")
        if kind == "$env":
            if target not in os.environ:
                raise ConfigError(f"{where}: environment variable {target} is not set")
            return os.environ[target]
        path = Path(target).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            return path.read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read $file {path}: {exc.strerror}") from None
    if isinstance(value, dict):
        return {k: resolve_refs(v, where=f"{where}.{k}", base=base) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, where=f"{where}[{i}]", base=base) for i, v in enumerate(value)]
    return value


def validate(
    plugin: str, schema: type[Any] | None, table: Mapping[str, Any] | None, *, base: Path | None
) -> Any:
    """The plugin's config object, or a ConfigError naming the plugin, key and problem."""
    where = f"[plugin.{plugin}]"
    if schema is None:
        if table:
            raise ConfigError(f"{where}: plugin {plugin!r} takes no configuration")
        return None
    import msgspec

    unknown = sorted(set(table or {}) - set(_field_names(schema)))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} "
            f"(plugin {plugin!r} knows: {', '.join(_field_names(schema)) or 'nothing'})"
        )
    resolved = resolve_refs(dict(table or {}), where=where, base=base)
    try:
        return msgspec.convert(resolved, type=schema, strict=True, str_keys=True)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Expected `int`, got `str` - at `$.port`": point at the TOML key.
        message = str(exc).replace("`$.", f"`{where}.").replace("`$`", f"`{where}`")
        raise ConfigError(f"{where}: {message}") from None
    except TypeError as exc:  # the schema itself is not a type msgspec understands
        raise ConfigError(f"{where}: plugin declares an unusable config schema: {exc}") from None


def _field_names(schema: type[Any]) -> list[str]:
    """The keys a schema accepts (dataclass, msgspec Struct or TypedDict)."""
    import dataclasses

    if dataclasses.is_dataclass(schema):
        return [f.name for f in dataclasses.fields(schema)]
    if hasattr(schema, "__struct_fields__"):
        return list(schema.__struct_fields__)
    return list(getattr(schema, "__annotations__", {}))


def redact(value: Any, key: str = "") -> Any:
    """A copy safe to print: references shown as references, sensitive-looking keys hidden."""
    if _is_ref(value):
        kind, target = next(iter(value.items()))
        return f"{REDACTED} ({kind} {target})"
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and SENSITIVE_KEY.search(key) and isinstance(value, str) and value:
        return REDACTED
    if isinstance(value, str):
        return _redact_url(redact_text(value))
    return value


def _redact_url(value: str) -> str:
    """Hide a URL's query string (tokens often ride there); user-info is already masked."""
    if "://" in value and "?" in value:
        return value.split("?", 1)[0] + "?" + REDACTED
    return value
