"""The command layer: one pure function per ``container`` call building its argv, and one parser
per output shape. Nothing here starts a process, so every line is testable without the engine.

Every argv is a list of strings handed to ``exec`` (never a shell string). Sources for the syntax
and the output shapes (apple/container, read at the commits named):

- docs/command-reference.md (24599bde): ``run``/``create`` options (``--name``, ``-l/--label``,
  ``-c/--cpus``, ``-m/--memory`` with 1 MiB granularity and a K/M/G suffix, ``--env-file`` and
  ``-e``, ``-i``, ``--network``, ``--uid``/``--gid``), ``start [--attach] [--interactive]``,
  ``stop [--signal] [--time]``, ``delete [--force]``, ``list [--all] [--format json]``,
  ``exec [-i] [--uid] [--gid] <id> <args>``, ``logs [-n N] <id>``, ``inspect <ids>``,
  ``system status``. There is no pids limit option, and no ``attach`` command.
- Sources/ContainerCommands/Container/ContainerList.swift (21005eee) and ContainerInspect.swift
  (59a4f063): both print a JSON array of ``PrintableContainer`` = ``{status, configuration,
  networks}`` encoded with a default ``JSONEncoder`` (so dates are seconds since 2001-01-01).
  ``list --format json`` prints every container whatever ``--all`` says (the flag only filters
  the table); ``inspect`` of an unknown id prints ``[]`` in that version.
- Sources/ContainerClient/Core/ContainerConfiguration.swift: ``configuration.{id, image.reference,
  labels, initProcess, resources.{cpus (an integer), memoryInBytes}, metadata.createdAt}``.
  ``initProcess.environment`` holds the env values: an inspect output is never logged or quoted.
- Sources/ContainerCommands/Container/ContainerStart.swift (2be8c743): "attach is currently
  unsupported on already running containers" — the only way to reach a main process's stdin is
  to be the CLI process that started it with ``--interactive``.
- Sources/ContainerCommands/Container/ContainerLogs.swift (3dd7fdde): ``logs -n N`` prints the
  last N non-empty lines of the container's stdio log.
- apple/container PR #878: errors read ``Error: internalError: "failed to stop container"
  (cause: "notFound: "container with ID x not found"")``; PR #739: ``--network none``.
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from valetkey_hookspecs.boxes import (
    BOX_ID_LABEL,
    DESCRIPTION_LABEL,
    EXEC_OUTPUT_LIMIT,
    MANAGED_LABEL,
    MANAGED_VALUE,
    TRUNCATION_MARKER,
    cap_output,
    check_box_files,
    check_box_id,
    is_valid_box_id,
    managed_labels,
    strip_ansi,
)
from valetkey_hookspecs.errors import InvalidInput, NotFound, PluginError
from valetkey_hookspecs.types import Box, BoxFile, BoxSpec

SPOKE_LABEL = "valetkey.spoke"

#: the file the entry gate waits for: written last by the file injection (see ``gated_command``)
READY_MARKER = "/.valetkey-files-ready"

#: Swift's default JSONEncoder writes a Date as seconds since this instant
_SWIFT_EPOCH = datetime(2001, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- argv builders


def cpus_arg(cpus: float) -> str:
    """``--cpus`` takes a whole number: round a fraction up, at least 1."""
    return str(max(1, math.ceil(cpus)))


def memory_arg(memory_mib: int) -> str:
    """``--memory`` with the M suffix (the CLI's granularity is 1 MiB)."""
    if memory_mib < 1:
        raise InvalidInput(f"memory_mib must be >= 1 (got {memory_mib})")
    return f"{memory_mib}M"


def box_labels(spec: BoxSpec) -> dict[str, str]:
    """The labels a box is created with: the caller's, then the managed ones (which win)."""
    return {**spec.labels, **managed_labels(spec.box_id, spec.description)}


def gated_command(command: Sequence[str]) -> list[str]:
    """Wrap the main command so it starts only once the injected files are in place.

    The CLI can copy files only into a running container (``exec``), so a box with files runs
    ``sh -c 'wait for READY_MARKER; exec "$@"' <command>``; the injection writes the marker last.
    """
    script = f'while [ ! -e {READY_MARKER} ]; do sleep 0.1 2>/dev/null || sleep 1; done; exec "$@"'
    return ["sh", "-c", script, "valetkey-gate", *command]


def create_argv(
    binary: str,
    spec: BoxSpec,
    env_file: str | None,
    *,
    memory_mib: int,
    cpus: float,
    network: str | None = None,
) -> list[str]:
    """``container create``: the box stopped, labelled, limited, its env read from ``env_file``.

    ``memory_mib``/``cpus`` are the resolved limits (``boxes.resolve_limits``), ``network`` the
    spec's or the configured default. Env values never appear here: they are in the 0600 file
    ``env_file`` names. The pids limit has no CLI option and is not passed (see the README).
    """
    argv = [binary, "create", "--name", spec.box_id]
    for key, value in box_labels(spec).items():
        argv += ["--label", f"{key}={value}"]
    argv += ["--cpus", cpus_arg(cpus), "--memory", memory_arg(memory_mib)]
    if network := spec.network or network:
        argv += ["--network", network]
    if spec.stdin_open:
        argv.append("--interactive")
    if env_file is not None:
        argv += ["--env-file", env_file]
    argv.append(spec.image)
    if spec.command is not None:
        argv += gated_command(spec.command) if spec.files else list(spec.command)
    return argv


def start_argv(binary: str, box_id: str, *, interactive: bool) -> list[str]:
    """``container start``: detached, or with ``--interactive`` (the CLI stays attached, holding
    the main process's stdin, until the process ends)."""
    return [binary, "start", *(["--interactive"] if interactive else []), box_id]


def exec_argv(binary: str, box_id: str, command: str) -> list[str]:
    """``container exec <id> sh -c <command>``."""
    return [binary, "exec", box_id, "sh", "-c", command]


def inject_argv(binary: str, box_id: str) -> list[str]:
    """``container exec -i --uid 0 --gid 0 <id> tar -x -f - -C /``: the archive comes on stdin.

    No ``-p``: busybox tar has none, and both GNU and busybox tar restore modes and numeric
    owners by default when run as root.
    """
    return [binary, "exec", "--interactive", "--uid", "0", "--gid", "0", box_id,
            "tar", "-x", "-f", "-", "-C", "/"]  # fmt: skip


def logs_argv(binary: str, box_id: str, tail: int) -> list[str]:
    """``container logs -n <tail> <id>``."""
    return [binary, "logs", "-n", str(max(0, tail)), box_id]


def stop_argv(binary: str, box_id: str, timeout: int) -> list[str]:
    """``container stop --signal SIGTERM --time <s> <id>``: SIGTERM, SIGKILL after ``timeout``."""
    return [binary, "stop", "--signal", "SIGTERM", "--time", str(timeout), box_id]


def delete_argv(binary: str, box_id: str, *, force: bool = False) -> list[str]:
    """``container delete [--force] <id>``."""
    return [binary, "delete", *(["--force"] if force else []), box_id]


def list_argv(binary: str) -> list[str]:
    """``container list --all --format json``."""
    return [binary, "list", "--all", "--format", "json"]


def inspect_argv(binary: str, container_id: str) -> list[str]:
    """``container inspect <id>``."""
    return [binary, "inspect", container_id]


def status_argv(binary: str) -> list[str]:
    """``container system status``: is the apiserver up."""
    return [binary, "system", "status"]


# --------------------------------------------------------------------------- inputs


def env_file_text(env: Mapping[str, str]) -> str:
    """The ``--env-file`` body: one ``KEY=value`` a line.

    ``InvalidInput`` (naming the variable, never its value) for what the format cannot carry: a
    name that is not an identifier, or a value with a newline.
    """
    lines = []
    for key, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise InvalidInput(f"invalid environment variable name {key!r}")
        if "\n" in value or "\r" in value or "\0" in value:
            raise InvalidInput(
                f"environment variable {key!r}: a value with a newline or NUL cannot be passed "
                "through the container CLI's env file"
            )
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def files_tar(files: Iterable[BoxFile], *, marker: bool = True) -> bytes:
    """A tar of the files (paths relative to ``/``, mode, numeric uid/gid), then the ready marker.

    No directory entries: tar creates missing parents, and an entry for an existing folder
    (``/tmp``) would reset its mode.
    """
    files = list(files)
    check_box_files(files)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entries = [(f.path, f.content, f.mode, f.uid, f.gid) for f in files]
        if marker:
            entries.append((READY_MARKER, b"", 0o644, 0, 0))
        for path, content, mode, uid, gid in entries:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(content)
            info.mode = mode & 0o7777
            info.uid, info.gid = uid, gid
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What valetkey reads of one container in ``list``/``inspect`` output."""

    id: str
    image: str
    status: str
    labels: Mapping[str, str]
    created_at: datetime | None

    @property
    def managed(self) -> bool:
        """Carries ``valetkey.managed=1``."""
        return self.labels.get(MANAGED_LABEL) == MANAGED_VALUE

    def to_box(self, runtime: str) -> Box:
        """The box this managed container is."""
        return Box(
            id=self.labels.get(BOX_ID_LABEL, self.id),
            runtime=runtime,
            image=self.image,
            state=self.status,
            container_id=self.id,
            description=self.labels.get(DESCRIPTION_LABEL, ""),
            labels=dict(self.labels),
            created_at=self.created_at,
            spoke=self.labels.get(SPOKE_LABEL),
        )


def _created_at(value: Any) -> datetime | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _SWIFT_EPOCH + timedelta(seconds=float(value))
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def parse_container(item: Any) -> ContainerInfo:
    """One ``PrintableContainer``; ``PluginError`` when the shape is not the documented one."""
    try:
        config = item["configuration"]
        labels = config.get("labels") or {}
        image = config.get("image") or {}
        metadata = config.get("metadata") or {}
        return ContainerInfo(
            id=str(config["id"]),
            image=str(image.get("reference", "")) if isinstance(image, dict) else str(image),
            status=str(item.get("status", "unknown")),
            labels={str(k): str(v) for k, v in labels.items()},
            created_at=_created_at(metadata.get("createdAt")),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        # name the missing key only: the item holds the init process's environment
        raise PluginError(
            f"unexpected container JSON from the container CLI (missing or bad {exc})"
        ) from None


def parse_containers(stdout: str) -> list[ContainerInfo]:
    """``list --format json`` / ``inspect`` output: a JSON array of containers."""
    try:
        data = json.loads(stdout or "[]")
    except json.JSONDecodeError:
        raise PluginError("the container CLI printed something that is not JSON") from None
    if not isinstance(data, list):
        raise PluginError("the container CLI printed JSON that is not an array of containers")
    return [parse_container(item) for item in data]


def managed_only(containers: Iterable[ContainerInfo]) -> list[ContainerInfo]:
    """Drop every container valetkey did not label as managed."""
    return [c for c in containers if c.managed]


def is_not_found(stderr: str) -> bool:
    """The CLI's "no such container" errors (``notFound: "container with ID x not found"``)."""
    lowered = stderr.lower()
    return "notfound" in lowered or "not found" in lowered


def is_already_stopped(stderr: str) -> bool:
    """A stop of a container that is not running."""
    lowered = stderr.lower()
    return "not running" in lowered or "stopped" in lowered or "invalidstate" in lowered


def error_line(stderr: str, limit: int = 300) -> str:
    """The CLI's last error line, shortened, ANSI stripped (for messages; never an inspect)."""
    lines = [line.strip() for line in strip_ansi(stderr).splitlines() if line.strip()]
    text = lines[-1] if lines else "no error output"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def raise_for(
    box_id: str, action: str, exit_code: int, stderr: str, secrets: Iterable[str] = ()
) -> None:
    """Map a failed CLI call: ``NotFound`` for a missing container, else ``PluginError``.

    ``secrets`` (env values) are cut from the message should the CLI ever echo one.
    """
    if exit_code == 0:
        return
    if is_not_found(stderr):
        raise NotFound(f"no box {box_id!r}")
    message = error_line(stderr)
    for value in secrets:
        if value:
            message = message.replace(value, "[REDACTED]")
    raise PluginError(f"container {action} {box_id!r} failed (exit {exit_code}): {message}")


__all__ = [
    "EXEC_OUTPUT_LIMIT",
    "TRUNCATION_MARKER",
    "ContainerInfo",
    "cap_output",
    "check_box_id",
    "create_argv",
    "delete_argv",
    "env_file_text",
    "exec_argv",
    "files_tar",
    "inject_argv",
    "inspect_argv",
    "is_valid_box_id",
    "list_argv",
    "logs_argv",
    "managed_only",
    "parse_containers",
    "raise_for",
    "start_argv",
    "status_argv",
    "stop_argv",
    "strip_ansi",
]
