"""Logging for valetkey: one format, level from ``VALETKEY_LOG_LEVEL``, and redaction.

Every handler valetkey installs carries :class:`RedactingFilter`: values registered with
:func:`register_secret` (tokens the process has handled) and anything shaped like a credential
header are replaced by ``[REDACTED]`` before a record is written.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import weakref
from typing import Any

REDACTED = "[REDACTED]"
_known: set[str] = set()
_PATTERNS = [
    re.compile(
        r"(?i)(authorization|proxy-authorization|x-api-key|api-key|cookie)"
        r"(\s*[:=]\s*)([^\s,;]+(?: [^\s,;]+)?)"
    ),
    re.compile(r"(?i)(bearer|basic)(\s+)([A-Za-z0-9._~+/=-]{8,})"),
    re.compile(
        r"(?i)((?:access|refresh|id)_token|client_secret|api_key|password)(\"?\s*[:=]\s*\"?)([^\s\",&;]+)"
    ),
]
_installed: weakref.WeakSet[logging.Handler] = weakref.WeakSet()


def register_secret(value: str | None) -> None:
    """Make ``value`` show as ``[REDACTED]`` in every later log line (values under 6 chars are
    ignored: they would blank out ordinary words)."""
    if value and len(value) >= 6:
        _known.add(value)


def redact_text(text: str) -> str:
    """``text`` with known secrets and credential-shaped values replaced."""
    for value in sorted(_known, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (after %-formatting) with :func:`redact_text`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.exc_text = (
                redact_text(logging.Formatter().formatException(record.exc_info))
                if str(exc)
                else None
            )
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


def setup(level: str | int | None = None, stream: Any = None) -> None:
    """Configure the ``valetkey`` loggers once (idempotent)."""
    level = level or os.environ.get("VALETKEY_LOG_LEVEL", "WARNING")
    root = logging.getLogger("valetkey")
    root.setLevel(level if isinstance(level, int) else level.upper())
    for handler in root.handlers:
        if handler in _installed:
            return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    _installed.add(handler)
    root.addHandler(handler)
    root.propagate = False
