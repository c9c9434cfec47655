"""The pluggy markers of the ``valetkey`` project. Plugins use ``hookimpl``; the spec marker is
private to the contract (tox's convention)."""

from __future__ import annotations

import pluggy

PROJECT = "valetkey"

#: decorator that marks a valetkey hook implementation
hookimpl = pluggy.HookimplMarker(PROJECT)
_hookspec = pluggy.HookspecMarker(PROJECT)
