"""Logging for valetkey: one format, level from ``VALETKEY_LOG_LEVEL``, and redaction everywhere.

:func:`setup` installs one handler on the ROOT logger carrying :class:`RedactingFilter`, so
every library's records (the MCP SDK, httpx, uvicorn, keyring) are redacted too, and libraries
that call ``logging.basicConfig`` (the MCP SDK does) find the root configured and add nothing.
What is redacted is defined in :mod:`valetkey_hookspecs.redaction`.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

from valetkey_hookspecs.redaction import REDACTED, redact_text, register_secret

__all__ = ["REDACTED", "RedactingFilter", "redact_text", "register_secret", "setup"]


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (after %-formatting), exception and stack text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact_text(message), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None  # the formatter prints exc_text, never re-renders the chain
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


_HANDLER_FLAG = "_valetkey_handler"


def setup(level: str | int | None = None, stream: Any = None) -> None:
    """Configure logging once (idempotent): a redacting handler on the root logger; valetkey's
    loggers at ``VALETKEY_LOG_LEVEL`` (default WARNING), other libraries at WARNING."""
    level = level or os.environ.get("VALETKEY_LOG_LEVEL", "WARNING")
    resolved = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(resolved, int):
        resolved = logging.WARNING
    root = logging.getLogger()
    logging.getLogger("valetkey").setLevel(resolved)
    if any(getattr(h, _HANDLER_FLAG, False) for h in root.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_FLAG, True)
    for existing in list(root.handlers):  # e.g. an earlier basicConfig: unfiltered, replace it
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(min(resolved, logging.WARNING))
