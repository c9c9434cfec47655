"""Keeping secrets out of text: what a log line, an error message or ``config show`` may print.

- :func:`register_secret` — a plugin that handles a secret value (a token it vended, a key it
  read) registers it; every later :func:`redact_text` replaces it with ``[REDACTED]``. The set is
  bounded (the most recent :data:`MAX_KNOWN` values).
- :func:`redact_text` — also replaces credential-shaped values: ``Authorization: Bearer …``,
  ``access_token=…``, ``"client_secret": "…"``, URL user-info and more.
- :data:`SENSITIVE_KEY` — config keys whose values are hidden by ``config show`` and must be
  ``repr=False`` in a plugin's config schema.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

REDACTED = "[REDACTED]"
MAX_KNOWN = 4096

#: a config or header name that holds a secret
SENSITIVE_KEY = re.compile(
    r"(secret|token|password|passwd|passphrase|key|dsn|credential|authorization|auth|cookie|"
    r"signature|private)",
    re.IGNORECASE,
)

_NAMES = (
    r"authorization|proxy-authorization|x-api-key|api-key|x-auth-token|private-token|cookie|"
    r"set-cookie|x-goog-api-key|x-subscription-token|dd-api-key|dd-application-key"
)
_FIELDS = (
    r"access_token|refresh_token|id_token|device_code|client_secret|api_key|api_secret|apikey|"
    r"password|passwd|secret|token|code_verifier|code|assertion"
)
_PATTERNS = [
    # header-like: "Authorization: Bearer x", "'authorization': 'token x'", "X-Api-Key=x"
    re.compile(
        rf"(?i)([\"']?(?:{_NAMES})[\"']?)(\s*[:=]\s*[\"']?)((?:bearer|basic|token)\s+)?([^\s\"',;}}]+)"
    ),
    # a bare scheme with a long credential
    re.compile(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/=-]{8,})"),
    # JSON / form / query fields: "access_token": "x", refresh_token=x, 'code': 'x'
    re.compile(rf"(?i)([\"']?\b(?:{_FIELDS})\b[\"']?)(\s*[:=]\s*[\"']?)([^\s\"',&;}}]+)"),
    # URL user-info: scheme://user:password@host
    re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]+)(:)([^@\s/]+)(?=@)"),
]

_known: OrderedDict[str, None] = OrderedDict()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every later :func:`redact_text` (values under 6 characters are
    ignored: they would blank out ordinary words)."""
    if not value or len(value) < 6:
        return
    with _lock:
        _known[value] = None
        _known.move_to_end(value)
        while len(_known) > MAX_KNOWN:
            _known.popitem(last=False)


def _mask(match: re.Match[str]) -> str:
    groups = match.groups()
    if len(groups) == 4:  # header-like: keep the scheme word, hide the value
        return f"{groups[0]}{groups[1]}{groups[2] or ''}{REDACTED}"
    return f"{groups[0]}{groups[1]}{REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with registered secrets and credential-shaped values replaced."""
    if not text:
        return text
    with _lock:
        known = [v for v in _known if v in text]
    for value in sorted(known, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(_mask, text)
    return text
