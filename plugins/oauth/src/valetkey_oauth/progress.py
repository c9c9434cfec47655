"""What a person sees while a flow waits: one live line on a terminal, nothing when piped."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def print_stderr(line: str) -> None:
    """The default for user-facing lines: standard error, so stdout stays for data."""
    print(line, file=sys.stderr, flush=True)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def format_left(seconds: float) -> str:
    """``754.2`` -> ``"12:34"``."""
    whole = max(0, int(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


@contextmanager
def waiting_line(message: str, *, enabled: bool | None = None) -> Iterator[Callable[[float], None]]:
    """A spinner with ``message`` and the time left, on stderr when it is a terminal.

    Yields ``update(seconds_left)``; when disabled (stderr piped) it does nothing.
    """
    if enabled is None:
        enabled = stderr_is_terminal()
    if not enabled:
        yield lambda seconds_left: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(message) as status:

        def update(seconds_left: float) -> None:
            status.update(f"{message} ({format_left(seconds_left)} left)")

        yield update
