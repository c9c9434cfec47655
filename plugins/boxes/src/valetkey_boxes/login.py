"""Reading a box's login from its output: the URL the person opens to sign in (printed before
the code), whether the login finished (ready or error, printed after the code) and the session
URL shown when it is ready. Patterns come from ``[plugin.boxes.login."<image>"]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from valetkey_hookspecs.redaction import REDACTED

from .config import LoginSpec


@dataclass(frozen=True)
class LoginOutcome:
    """What the output after the code says: still waiting, ready, or failed."""

    ready: bool = False
    error: str | None = None
    session_url: str | None = None


def login_url(spec: LoginSpec, output: str) -> str | None:
    """The first URL the box printed (what the person opens to sign in), or None."""
    m = re.search(spec.url_pattern, output)
    return m.group(0) if m else None


def outcome(spec: LoginSpec, after: str, code: str) -> LoginOutcome:
    """Read the output printed after the code was sent. The code never appears in the result
    (a login program may echo it)."""
    text = after.replace(code, REDACTED) if code else after
    err = re.search(spec.error_pattern, text)
    if err is not None:
        return LoginOutcome(error=err.group(0).strip()[:300] or "the login failed")
    if re.search(spec.ready_pattern, text) is None:
        return LoginOutcome()
    urls = re.findall(spec.session_url_pattern, text)
    last = urls[-1] if urls else None
    if isinstance(last, tuple):  # a pattern with groups: findall returns tuples
        last = next((g for g in last if g), None)
    return LoginOutcome(ready=True, session_url=last)


def output_after(before: str, now: str) -> str:
    """What ``now`` (a logs tail) adds to ``before`` (the tail taken before the code was sent).

    Linear time: when the tail window moved, the last lines of ``before`` (an anchor) are
    looked for in ``now``; output after the anchor's last occurrence is new. Without an anchor
    (nothing of ``before`` is left in ``now``) all of ``now`` is new."""
    if not before:
        return now
    if now.startswith(before):
        return now[len(before) :]
    lines = before.splitlines(keepends=True)
    anchor = "".join(lines[-ANCHOR_LINES:])
    at = now.rfind(anchor)
    if at >= 0:
        return now[at + len(anchor) :]
    return now


#: lines at the end of the earlier tail that identify where new output starts
ANCHOR_LINES = 8
