"""Progress for long waits: a live line on a terminal, silence when stderr is piped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Progress(Protocol):
    """What a long-running command reports to."""

    def update(self, message: str | None = None, *, advance: float = 0) -> None:
        """Change the message and/or move the bar."""


class _Silent:
    def update(self, message: str | None = None, *, advance: float = 0) -> None:
        return None


class _Live:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def update(self, message: str | None = None, *, advance: float = 0) -> None:
        kwargs: dict[str, Any] = {"advance": advance}
        if message is not None:
            kwargs["description"] = message
        self._progress.update(self._task, **kwargs)


def interactive() -> bool:
    """True when stderr is a terminal a person watches."""
    return sys.stderr.isatty()


@contextmanager
def progress(message: str, total: float | None = None) -> Iterator[Progress]:
    """``with progress("Re-wrapping", total=n) as p: p.update(advance=1)``."""
    if not interactive():
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn
    from rich.progress import Progress as RichProgress

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    with RichProgress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield _Live(bar, bar.add_task(message, total=total))
