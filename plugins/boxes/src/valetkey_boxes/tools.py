"""The box tools on the ``/mcp`` endpoint of ``valetkey serve``. A chat assistant sees box ids,
states, console output and the auth-page URL — never an OAuth code or a credential: the person
pastes the code on the auth page, which sends it to the box's stdin."""

from __future__ import annotations

from typing import Any

from valetkey_hookspecs import KernelAPI
from valetkey_hookspecs.interfaces import RegisterMcpTool

from .manager import manager_for


def register_tools(register: RegisterMcpTool, kernel: KernelAPI) -> None:
    """Add create_box, get_box, list_boxes, destroy_box, get_box_logs, exec_box and
    list_spokes."""

    async def create_box(
        box_id: str,
        image: str | None = None,
        description: str = "",
        grants: list[str] | None = None,
        spoke: str | None = None,
    ) -> dict[str, Any]:
        """Create a sandbox box (a container) and return its auth page URL.

        Give the person the auth_url: they open it, sign in with the provider the box's login
        prints, and paste the code there (never in this chat). The box is pending until then.
        box_id: lower-case letters, digits and inner dashes, at most 63 characters.
        grants: connector slugs or connection ids whose credentials the box's requests get
        through the proxy (the box holds placeholders only).
        """
        created = await manager_for(kernel).create(
            box_id, image=image, description=description, grants=grants, spoke=spoke
        )
        return created.as_dict()

    async def get_box(box_id: str) -> dict[str, Any]:
        """A box's state, auth status (pending, ready, error) and session URL when ready."""
        return await manager_for(kernel).get(box_id)

    async def list_boxes() -> list[dict[str, Any]]:
        """Every box valetkey manages, with its state, auth status and spoke (the host it runs
        on; "local" is this server). Boxes of a spoke that cannot be reached right now show
        state "unknown" and a spoke_error."""
        return await manager_for(kernel).list_boxes()

    async def destroy_box(box_id: str) -> dict[str, Any]:
        """Stop and remove a box and forget its session."""
        await manager_for(kernel).destroy(box_id)
        return {"box_id": box_id, "destroyed": True}

    async def get_box_logs(box_id: str, tail: int = 200) -> str:
        """The last lines of a box's console output (ANSI stripped)."""
        return await manager_for(kernel).logs(box_id, tail)

    async def exec_box(box_id: str, command: str) -> dict[str, Any]:
        """Run a shell command line in a box (sh -c); a non-zero exit code is a result.

        Output streams are capped at 64 KiB each (truncated says so).
        """
        result = await manager_for(kernel).exec(box_id, command)
        return {
            "stdout": result.stdout,
            "stderr": result.stderr,
            "exit_code": result.exit_code,
            "truncated": result.truncated,
        }

    async def list_spokes() -> list[dict[str, Any]]:
        """Where boxes run: this server ("local") and each enrolled spoke, with whether it is
        connected now, when it was last seen and how many boxes it has."""
        from .hub import hub_for

        return await hub_for(kernel).statuses()

    for fn in (create_box, get_box, list_boxes, destroy_box, get_box_logs, exec_box, list_spokes):
        register(fn)
