"""Typed errors shared by the kernel and every plugin.

Each error carries a message meant for a person: the CLI prints ``str(error)`` as one line and
exits with ``exit_code``; the REST API maps ``http_status`` and ``code`` to a stable JSON shape.
No error message may contain a secret value: name the record, never print its contents.
"""

from __future__ import annotations


class ValetkeyError(Exception):
    """Base of every expected valetkey error (never shown as a traceback)."""

    code = "error"
    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(ValetkeyError):
    """The record does not exist, or belongs to another owner (never "forbidden")."""

    code = "not_found"
    http_status = 404


class Conflict(ValetkeyError):
    """The record exists already, or changed since it was read."""

    code = "conflict"
    http_status = 409


class InvalidInput(ValetkeyError):
    """Bad input from a user or a client; nothing was changed."""

    code = "invalid_input"
    exit_code = 2
    http_status = 400


class NeedsReauth(ValetkeyError):
    """The connection's grant is dead; its owner must connect again."""

    code = "needs_reauth"
    http_status = 409


class Revoked(ValetkeyError):
    """The connection was revoked and vends nothing."""

    code = "revoked"
    http_status = 410


class RateLimited(ValetkeyError):
    """A connector's rate profile is exhausted; nothing was sent."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(ValetkeyError):
    """Missing or wrong credentials for valetkey itself or for a remote service."""

    code = "unauthorized"
    http_status = 401


class ConfigError(ValetkeyError):
    """plugins.toml, a plugin's config table or the environment is wrong."""

    code = "config_error"
    exit_code = 78  # EX_CONFIG
    http_status = 500


class PluginError(ValetkeyError):
    """A plugin failed to load, register or behave as its contract says."""

    code = "plugin_error"
    http_status = 500


class SealError(ValetkeyError):
    """A sealed record cannot be opened: wrong key, unknown key id or tampered bytes."""

    code = "seal_error"
    http_status = 500


class RuntimeUnavailable(ValetkeyError):
    """A box runtime (container engine) cannot be reached."""

    code = "runtime_unavailable"
    http_status = 503


__all__ = [
    "ConfigError",
    "Conflict",
    "InvalidInput",
    "NeedsReauth",
    "NotFound",
    "PluginError",
    "RateLimited",
    "Revoked",
    "RuntimeUnavailable",
    "SealError",
    "Unauthorized",
    "ValetkeyError",
]
