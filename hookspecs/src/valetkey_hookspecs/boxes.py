"""Engine-neutral rules every box runtime applies the same way: which box ids are valid, how exec
output is capped, how logs are cleaned, which labels mark a managed container.

A runtime calls :func:`check_box_id` (and :func:`check_box_files`) before it asks its engine for
anything, so a bad request never leaves a container behind; :func:`cap_output` and
:func:`strip_ansi` give every runtime the same ``... [output truncated]`` marker and the same
clean log text.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable

from .errors import InvalidInput
from .types import BoxFile, BoxSpec

#: a box id: lower-case letters, digits and inner dashes, 1-63 characters (a DNS label, so it can
#: be the box's hostname)
BOX_ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_BOX_ID = re.compile(BOX_ID_PATTERN)

#: each exec stream (stdout, stderr) keeps at most this many bytes
EXEC_OUTPUT_LIMIT = 64 * 1024
#: what ends a capped stream
TRUNCATION_MARKER = "... [output truncated]"
#: lines ``logs`` returns when the caller names no number
DEFAULT_LOG_TAIL = 200

#: the limits a box gets when neither its spec nor the runtime's config names others
DEFAULT_MEMORY_MIB = 4096
DEFAULT_CPUS = 2.0
DEFAULT_PIDS = 4096
#: exit code of an exec that ran out of time (as coreutils ``timeout`` reports it)
EXEC_TIMEOUT_EXIT_CODE = 124

#: the label every container a runtime creates carries, and the only ones it ever looks at
MANAGED_LABEL = "valetkey.managed"
MANAGED_VALUE = "1"
#: the label holding the box id
BOX_ID_LABEL = "valetkey.box-id"
#: the label holding the box's description
DESCRIPTION_LABEL = "valetkey.description"

# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), character set designations
# (ESC ( B), then every other two-byte escape (ESC 0x30-0x7E)
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()*+#%][ -~]|\x1b[0-~]"
)


def is_valid_box_id(box_id: str) -> bool:
    """Whether ``box_id`` matches :data:`BOX_ID_PATTERN`."""
    return bool(_BOX_ID.fullmatch(box_id)) if isinstance(box_id, str) else False


def check_box_id(box_id: str) -> str:
    """Return ``box_id`` when valid; raise :class:`InvalidInput` naming the rule otherwise."""
    if not is_valid_box_id(box_id):
        shown = box_id if isinstance(box_id, str) and len(box_id) <= 80 else f"{str(box_id)[:80]}…"
        raise InvalidInput(
            f"invalid box id {shown!r}: use 1-63 lower-case letters, digits and dashes, "
            "starting and ending with a letter or digit"
        )
    return box_id


def check_box_files(files: Iterable[BoxFile]) -> None:
    """Raise :class:`InvalidInput` for a file that cannot be injected: a relative path, ``..``,
    a folder path, a path given twice, or a mode, uid or gid out of range."""
    seen: set[str] = set()
    for f in files:
        path = f.path
        parts = path.split("/")
        if not path.startswith("/") or path.endswith("/") or ".." in parts or "\x00" in path:
            raise InvalidInput(
                f"box file {path!r}: the path must be absolute, name a file and contain no '..'"
            )
        normal = "/".join(p for p in parts if p not in ("", "."))
        if normal in seen:
            raise InvalidInput(f"box file {path!r} is given twice")
        seen.add(normal)
        if not 0 <= f.mode <= 0o7777:
            raise InvalidInput(f"box file {path!r}: mode {f.mode:o} is not a file mode")
        if f.uid < 0 or f.gid < 0:
            raise InvalidInput(f"box file {path!r}: uid and gid must be >= 0")


def resolve_limits(
    spec: BoxSpec,
    *,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    cpus: float = DEFAULT_CPUS,
    pids: int = DEFAULT_PIDS,
) -> tuple[int, float, int]:
    """(memory MiB, CPUs, pids) for ``spec``: its own values, else the runtime's defaults given
    here; raise :class:`InvalidInput` for a value that is not positive."""
    memory = spec.memory_mib if spec.memory_mib is not None else memory_mib
    cpu = spec.cpus if spec.cpus is not None else cpus
    pid = spec.pids if spec.pids is not None else pids
    for name, value in (("memory_mib", memory), ("cpus", cpu), ("pids", pid)):
        if not value > 0:
            raise InvalidInput(f"box {spec.box_id!r}: {name} must be positive (got {value})")
    return memory, cpu, pid


def cap_output(data: bytes, limit: int = EXEC_OUTPUT_LIMIT) -> tuple[str, bool]:
    """Decode one stream (UTF-8, invalid bytes replaced) keeping at most ``limit`` bytes; a cut
    stream ends with a line holding :data:`TRUNCATION_MARKER`. Returns (text, truncated)."""
    if len(data) <= limit:
        return data.decode("utf-8", errors="replace"), False
    # an incremental decoder holds back a multi-byte character cut at the limit
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(data[:limit], final=False)
    if not text.endswith("\n"):
        text += "\n"
    return text + TRUNCATION_MARKER, True


def timed_out(result_stderr: str, seconds: float) -> str:
    """``stderr`` of an exec that ran out of time: what it wrote, then a line saying so."""
    if result_stderr and not result_stderr.endswith("\n"):
        result_stderr += "\n"
    return f"{result_stderr}... [timed out after {seconds:g}s]"


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves, titles)."""
    return _ANSI.sub("", text)


def managed_labels(box_id: str, description: str = "") -> dict[str, str]:
    """The labels that make a container a managed box (they win over a spec's own labels)."""
    labels = {MANAGED_LABEL: MANAGED_VALUE, BOX_ID_LABEL: box_id}
    if description:
        labels[DESCRIPTION_LABEL] = description
    return labels


__all__ = [
    "BOX_ID_LABEL",
    "BOX_ID_PATTERN",
    "DEFAULT_CPUS",
    "DEFAULT_LOG_TAIL",
    "DEFAULT_MEMORY_MIB",
    "DEFAULT_PIDS",
    "DESCRIPTION_LABEL",
    "EXEC_OUTPUT_LIMIT",
    "EXEC_TIMEOUT_EXIT_CODE",
    "MANAGED_LABEL",
    "MANAGED_VALUE",
    "TRUNCATION_MARKER",
    "cap_output",
    "check_box_files",
    "check_box_id",
    "is_valid_box_id",
    "managed_labels",
    "resolve_limits",
    "strip_ansi",
    "timed_out",
]
