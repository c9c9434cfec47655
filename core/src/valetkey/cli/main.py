"""Entry point of the ``valetkey`` console script.

Builds the root cyclopts app with the kernel's own commands (registered lazily, by import path)
and lets every loaded plugin add its commands. Expected errors (``ValetkeyError``) print one line
``valetkey: error: ...`` and exit non-zero; parse errors exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__

# Only the standard library is imported at the top: '--version' and a cached '--help' are answered
# before anything else loads (bench/cli_startup.py).

CORE_COMMANDS: list[tuple[str, str, str]] = [
    ("valetkey.cli.plugins_cmd:app", "plugins", "List, check and scaffold plugins."),
    (
        "valetkey.cli.config_cmd:app",
        "config",
        "Show the configuration in force (secrets redacted).",
    ),
    ("valetkey.cli.vault_cmd:app", "vault", "Inspect the vault and rotate its key-encryption key."),
    (
        "valetkey.cli.store_cmd:app",
        "store",
        "Move valetkey's records between stores (SQLite to PostgreSQL).",
    ),
    (
        "valetkey.cli.serve_cmd:serve",
        "serve",
        "Run the valetkey server (REST API, /mcp, services).",
    ),
]


def build_app(kernel: Any | None) -> Any:
    """The root app; plugin commands are added when ``kernel`` is given."""
    from cyclopts import App, Parameter

    app = App(
        name="valetkey",
        version=f"valetkey {__version__}",
        help="Hand your agents a valet key, not your keys.",
        help_format="plaintext",
        default_parameter=Parameter(negative=()),
        error_formatter=_format_parse_error,
    )
    for target, name, help_text in CORE_COMMANDS:
        app.command(target, name=name, help=help_text)
    if kernel is not None:
        kernel.register_commands(app)
    return app


def _format_parse_error(error: Any) -> Any:
    from rich.text import Text

    return Text(f"valetkey: error: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    if tokens == ["--version"]:  # answered without loading anything
        sys.stdout.write(f"valetkey {__version__}\n")
        return 0
    root_help = tokens in ([], ["--help"], ["-h"])
    if root_help:
        from . import helpcache

        if (cached := helpcache.lookup()) is not None:
            sys.stdout.write(cached)
            return 0
    from valetkey_hookspecs import ValetkeyError

    from .. import log
    from . import state

    log.setup()
    kernel = None
    try:
        from ..kernel import load

        kernel = load()
        state.set_kernel(kernel)
    except ValetkeyError as exc:
        # --help, --version, 'plugins doctor' and 'config show' still work and explain.
        state.set_kernel(None, exc)
    try:
        app = build_app(kernel)
        if root_help:
            return _help(app, kernel)
        result = app(tokens, result_action="return_value")
    except ValetkeyError as exc:
        _say(exc)
        return exc.exit_code
    except SystemExit as exc:  # cyclopts parse errors and --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        sys.stderr.write("valetkey: interrupted\n")
        return 130
    except BrokenPipeError:  # `valetkey ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("VALETKEY_DEBUG"):
            raise
        sys.stderr.write(
            f"valetkey: internal error: {type(exc).__name__}: {log.redact_text(str(exc))} "
            "(set VALETKEY_DEBUG=1 for the traceback, and please report it)\n"
        )
        return 70
    if isinstance(result, bool):
        return 0 if result else 1
    return result if isinstance(result, int) else 0


def _help(app: Any, kernel: Any) -> int:
    """Render the root help, print it and cache it (see :mod:`.helpcache`)."""
    import io

    from rich.console import Console

    from . import helpcache

    buffer = io.StringIO()
    console = Console(file=buffer, width=helpcache.width(), color_system=None, highlight=False)
    app(["--help"], console=console, result_action="return_value")
    text = buffer.getvalue()
    sys.stdout.write(text)
    sources = [str(Path(__file__).resolve())]
    if kernel is not None:
        for impl in kernel.pm.hook.valetkey_register_commands.get_hookimpls():
            module = sys.modules.get(getattr(impl.function, "__module__", ""))
            if module is not None and getattr(module, "__file__", None):
                sources.append(str(module.__file__))
        helpcache.store(text, sources)
    return 0


def _say(exc: Exception) -> None:
    from ..log import redact_text

    sys.stderr.write(f"valetkey: error: {redact_text(str(exc))}\n")


def run() -> None:
    """``python -m valetkey``."""
    sys.exit(main())
