"""``RemoteRuntime``: the :class:`~valetkey_hookspecs.BoxRuntime` protocol of one spoke, as the
hub sees it — every method is a call over the spoke's WebSocket (``Hub.call``). The box manager
gets one through ``BoxManager.spoke_runtime`` for a box whose session names the spoke.

Box ids are checked here before anything is sent, and again by the spoke; boxes the spoke
reports come back tagged with its name. A spoke that is not connected is
``RuntimeUnavailable``; its errors come back as the same valetkey error classes.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from valetkey_hookspecs import Box, BoxSpec, ExecResult
from valetkey_hookspecs.boxes import check_box_id

from . import fleet_protocol as proto

if TYPE_CHECKING:
    from .hub import Hub

#: an exec with no timeout of its own waits at most this long on the spoke (its runtime's
#: default is 600 s)
DEFAULT_EXEC_SECONDS = 600.0


class RemoteRuntime:
    """The boxes of spoke ``spoke``, reached through ``hub``."""

    def __init__(self, hub: Hub, spoke: str) -> None:
        self.hub, self.spoke = hub, spoke
        link = hub.links.get(spoke)
        #: the spoke's own runtime's name (``docker``), as it said when it connected
        self.name = (link.runtime if link is not None and link.runtime else "") or "remote"

    async def _call(self, method: str, params: dict[str, Any], timeout: float | None = None) -> Any:
        return await self.hub.call(self.spoke, method, params, timeout)

    async def create(self, spec: BoxSpec) -> Box:
        """Create the box on the spoke."""
        check_box_id(spec.box_id)
        data = await self._call("create", {"spec": proto.spec_to_wire(spec)})
        return proto.box_from_wire(data, self.spoke)

    async def get(self, box_id: str) -> Box:
        """The box (``NotFound`` from the spoke when it has none)."""
        check_box_id(box_id)
        return proto.box_from_wire(await self._call("get", {"box_id": box_id}), self.spoke)

    async def list(self) -> list[Box]:
        """Every box of the spoke, tagged with its name."""
        data = await self._call("list", {})
        if not isinstance(data, list):
            raise proto.FrameError(f"spoke {self.spoke!r} sent a malformed box list")
        return [proto.box_from_wire(item, self.spoke) for item in data]

    async def exec(self, box_id: str, command: str, *, timeout: float | None = None) -> ExecResult:
        """``sh -c command`` in the box; the call waits for the exec's own timeout plus the
        hub's ``call_timeout``."""
        check_box_id(box_id)
        wait = (timeout if timeout is not None else DEFAULT_EXEC_SECONDS) + (
            self.hub.config.call_timeout
        )
        data = await self._call(
            "exec", {"box_id": box_id, "command": command, "timeout": timeout}, wait
        )
        return proto.exec_from_wire(data, self.spoke)

    async def logs(self, box_id: str, tail: int = 200) -> str:
        """The box's last ``tail`` console lines."""
        check_box_id(box_id)
        return str(await self._call("logs", {"box_id": box_id, "tail": tail}))

    async def write_stdin(self, box_id: str, data: bytes) -> None:
        """Write to the box's main process (base64 on the wire)."""
        check_box_id(box_id)
        encoded = base64.b64encode(data).decode("ascii")
        await self._call("write_stdin", {"box_id": box_id, "data": encoded})

    async def destroy(self, box_id: str) -> None:
        """Stop and remove the box on the spoke."""
        check_box_id(box_id)
        await self._call("destroy", {"box_id": box_id})

    async def is_alive(self, container_id: str) -> bool:
        """Whether the spoke's container is still running."""
        return bool(await self._call("is_alive", {"container_id": container_id}))

    async def close(self) -> None:
        """Nothing to release (the connection belongs to the hub)."""


__all__ = ["DEFAULT_EXEC_SECONDS", "RemoteRuntime"]
