"""``valetkey box create|list|get|exec|logs|destroy``: the box manager from the command line
(the same manager, store and runtime as the MCP tools of ``valetkey serve``)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from cyclopts import App

from .manager import BoxManager

T = TypeVar("T")

box_app = App(name="box", help="Sandbox boxes: create, list, inspect, exec in, destroy.")


def _run(fn: Callable[[BoxManager], Awaitable[T]]) -> T:
    from valetkey.cli import state

    kernel = state.kernel()

    async def main() -> T:
        async with kernel:
            manager = BoxManager(kernel)
            try:
                return await fn(manager)
            finally:
                await manager.runtime.close()

    return anyio.run(main)


def _json(data: Any) -> None:
    from valetkey.cli.output import print_json

    print_json(data)


class _Progress:
    """A one-line "creating box x… 1.2 s" on a terminal's stderr while a box starts; silent when
    stderr is not a terminal (scripts, --json)."""

    def __init__(self, what: str, enabled: bool) -> None:
        self.what, self.enabled = what, enabled and sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def _tick(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(0.1):
            sys.stderr.write(f"\r{self.what}… {time.monotonic() - started:.1f} s")
            sys.stderr.flush()


@box_app.command
def create(
    box_id: str,
    *,
    image: str | None = None,
    description: str = "",
    grant: list[str] | None = None,
    json: bool = False,
) -> int:
    """Create a box and print its auth page URL.

    Parameters
    ----------
    box_id
        Lower-case letters, digits and inner dashes, at most 63 characters.
    image
        The container image (default: [plugin.boxes] default_image).
    description
        What the box is for (shown on the auth page).
    grant
        A connector slug or connection id whose credentials the box's requests get through the
        proxy; repeatable.
    json
        Print JSON.
    """
    with _Progress(f"creating box {box_id}", not json):
        created = _run(
            lambda m: m.create(box_id, image=image, description=description, grants=grant)
        )
    if json:
        _json(created.as_dict())
    else:
        sys.stdout.write(f"box {box_id} is pending: open {created.auth_url} to sign it in\n")
    return 0


@box_app.command(name="list")
def list_(*, json: bool = False) -> int:
    """List boxes with their state and auth status.

    Parameters
    ----------
    json
        Print JSON.
    """
    rows = _run(lambda m: m.list_boxes())
    if json:
        _json(rows)
        return 0
    from valetkey.cli.output import print_table

    print_table(
        ["BOX", "STATUS", "STATE", "IMAGE", "DESCRIPTION"],
        [
            [r["box_id"], r.get("status"), r.get("state"), r.get("image"), r.get("description")]
            for r in rows
        ],
    )
    return 0


@box_app.command
def get(box_id: str, *, json: bool = False) -> int:
    """Show one box.

    Parameters
    ----------
    box_id
        The box.
    json
        Print JSON.
    """
    info = _run(lambda m: m.get(box_id))
    if json:
        _json(info)
    else:
        for key, value in info.items():
            if value not in (None, ""):
                sys.stdout.write(f"{key}: {value}\n")
    return 0


@box_app.command(name="exec")
def exec_(box_id: str, command: str, *, json: bool = False, timeout: float | None = None) -> int:
    """Run a shell command line in a box; exits with its exit code.

    Parameters
    ----------
    box_id
        The box.
    command
        A shell command line (run with sh -c).
    json
        Print JSON (stdout, stderr, exit_code, truncated) and exit 0.
    timeout
        Seconds before the command is stopped (exit code 124).
    """
    result = _run(lambda m: m.exec(box_id, command, timeout=timeout))
    if json:
        _json(
            {
                "stdout": result.stdout,
                "stderr": result.stderr,
                "exit_code": result.exit_code,
                "truncated": result.truncated,
            }
        )
        return 0
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.exit_code


@box_app.command
def logs(box_id: str, *, tail: int = 200) -> int:
    """Print the last lines of a box's console.

    Parameters
    ----------
    box_id
        The box.
    tail
        How many lines (1-10000).
    """
    text = _run(lambda m: m.logs(box_id, tail))
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


@box_app.command
def destroy(box_id: str, *, json: bool = False) -> int:
    """Stop and remove a box and forget its session.

    Parameters
    ----------
    box_id
        The box.
    json
        Print JSON.
    """
    with _Progress(f"destroying box {box_id}", not json):
        _run(lambda m: m.destroy(box_id))
    if json:
        _json({"box_id": box_id, "destroyed": True})
    else:
        sys.stdout.write(f"box {box_id} destroyed\n")
    return 0
