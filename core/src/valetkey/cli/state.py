"""The kernel the running CLI loaded, for lazily imported command modules."""

from __future__ import annotations

from valetkey_hookspecs import ValetkeyError

from ..kernel import Kernel

_kernel: Kernel | None = None
_error: ValetkeyError | None = None


def set_kernel(kernel: Kernel | None, error: ValetkeyError | None = None) -> None:
    """Record the CLI's kernel, or why it could not be loaded."""
    global _kernel, _error
    _kernel, _error = kernel, error


def kernel() -> Kernel:
    """The CLI's kernel; re-raises the load error for commands that need one."""
    if _kernel is None:
        if _error is not None:
            raise _error
        from ..kernel import load

        set_kernel(load())
    assert _kernel is not None
    return _kernel
