"""Box lifecycle hooks: the plugins' (``valetkey_register_box_hooks``) and executables named in
``[plugin.boxes] hooks``, bridged to the same :class:`~valetkey_hookspecs.BoxHook` protocol.

An executable hook is called as ``HOOK create`` or ``HOOK destroy`` with one JSON document on
stdin and answers on stdout:

- create reads ``{"event": {box_id, image, runtime, description, spoke}}`` and prints
  ``{"files": [{"path", "content" | "content_base64", "mode", "uid", "gid"}], "state": {...}}``
  (both keys optional);
- destroy reads ``{"event": {...}, "state": {...}}`` (what its create returned) and prints
  nothing that matters.

A non-zero exit, bad JSON or a timeout is an error naming the hook and quoting the end of its
stderr (secrets redacted). State is kept per hook name, persisted with the box, and replayed to
destroy hooks — also when a creation fails after the hook ran.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from valetkey_hookspecs import (
    BoxFile,
    BoxHook,
    BoxHookEvent,
    BoxHookResult,
    InvalidInput,
    PluginError,
)
from valetkey_hookspecs.redaction import redact_text

log = logging.getLogger("valetkey.boxes.hooks")

MAX_OUTPUT = 8 * 1024 * 1024


class ExecutableHook:
    """One hook program (see the module docstring)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    async def on_create(self, event: BoxHookEvent) -> BoxHookResult:
        """Run ``HOOK create``; parse files and state."""
        out = await self._run("create", {"event": asdict(event)})
        try:
            data = json.loads(out or b"{}")
        except json.JSONDecodeError as exc:
            raise PluginError(
                f"box hook {self.path}: create printed invalid JSON ({exc})"
            ) from None
        if not isinstance(data, dict):
            raise PluginError(f"box hook {self.path}: create must print a JSON object")
        state = data.get("state") or {}
        if not isinstance(state, dict):
            raise PluginError(f"box hook {self.path}: 'state' must be an object")
        files = tuple(_file(self.path, i, f) for i, f in enumerate(data.get("files") or []))
        return BoxHookResult(files=files, state=state)

    async def on_destroy(self, event: BoxHookEvent, state: Mapping[str, Any]) -> None:
        """Run ``HOOK destroy`` with the state create returned."""
        await self._run("destroy", {"event": asdict(event), "state": dict(state)})

    async def _run(self, action: str, payload: dict[str, Any]) -> bytes:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.path,
                action,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(os.environ),
            )
        except OSError as exc:
            raise PluginError(f"box hook {self.path}: cannot run it ({exc.strerror})") from None
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(payload).encode()), self.timeout
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PluginError(
                f"box hook {self.path}: {action} took longer than {self.timeout:g} s"
            ) from None
        if proc.returncode != 0:
            tail = redact_text(err.decode(errors="replace").strip()[-500:])
            raise PluginError(
                f"box hook {self.path}: {action} exited with status {proc.returncode}"
                + (f": {tail}" if tail else "")
            )
        if len(out) > MAX_OUTPUT:
            raise PluginError(f"box hook {self.path}: {action} printed more than 8 MiB")
        return out


def _file(hook: str, index: int, raw: Any) -> BoxFile:
    where = f"box hook {hook}: files[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not raw["path"]:
        raise PluginError(f"{where}: needs a 'path'")
    path = raw["path"]
    if not path.startswith("/"):
        raise PluginError(f"{where}: path {path!r} must be absolute")
    if "content_base64" in raw:
        try:
            content = base64.b64decode(raw["content_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise PluginError(f"{where}: content_base64 is not base64") from None
    elif isinstance(raw.get("content"), str):
        content = raw["content"].encode()
    else:
        raise PluginError(f"{where}: needs 'content' (text) or 'content_base64'")
    try:
        mode = int(raw.get("mode", 0o644))
        uid, gid = int(raw.get("uid", 0)), int(raw.get("gid", 0))
    except (TypeError, ValueError):
        raise PluginError(f"{where}: mode, uid and gid must be integers") from None
    if not 0 <= mode <= 0o7777 or uid < 0 or gid < 0:
        raise PluginError(f"{where}: mode must be 0..0o7777, uid and gid >= 0")
    return BoxFile(path=path, content=content, mode=mode, uid=uid, gid=gid)


async def run_create(
    hooks: list[tuple[str, BoxHook]], event: BoxHookEvent
) -> tuple[list[BoxFile], dict[str, Any]]:
    """Run every create hook in order. On a failure, the destroy hooks of those that already
    ran are replayed with their state, and the error is raised."""
    files: list[BoxFile] = []
    states: dict[str, Any] = {}
    for name, hook in hooks:
        try:
            result = await hook.on_create(event)
        except Exception as exc:
            await run_destroy(hooks, event, states)
            if isinstance(exc, PluginError | InvalidInput):
                raise
            raise PluginError(
                f"box hook {name}: create failed: {type(exc).__name__}: {redact_text(str(exc))}"
            ) from exc
        files.extend(result.files)
        states[name] = dict(result.state)
    return files, states


async def run_destroy(
    hooks: list[tuple[str, BoxHook]], event: BoxHookEvent, states: Mapping[str, Any]
) -> None:
    """Replay each hook's state to its destroy (only hooks that have state, i.e. whose create
    ran); failures are logged, never raised."""
    for name, hook in hooks:
        if name not in states:
            continue
        try:
            await hook.on_destroy(event, states[name])
        except Exception as exc:
            log.warning(
                "box %s: destroy hook %s failed: %s", event.box_id, name, redact_text(str(exc))
            )
