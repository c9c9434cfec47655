"""The store's single SQLite connection: private files, pragmas, migrations and one-hop calls.

aiosqlite gives each connection one worker thread and runs every call there in order. ``call(fn)``
ships a whole function to that thread in ONE hop, so:

- a hot path is one await, however many statements it runs;
- ``transaction(fn)`` (``BEGIN IMMEDIATE`` ... ``COMMIT``) runs start to end on the worker thread:
  no other coroutine's statement can land inside it, and a cancelled await never leaves it
  half open (the thread finishes it either way). This is what an ``asyncio.Lock`` around
  multi-await transactions would give, without the extra round trips;
- ``BEGIN IMMEDIATE`` takes SQLite's write lock before the first read, so two processes (or two
  store objects) on one file serialize their read-then-write transactions instead of forking.

aiosqlite has no public "run this function on your thread" call; ``call`` uses its internal
``Connection._execute`` (what every public aiosqlite method is built on) in this one place.

Errors leave as valetkey errors only: a UNIQUE / PRIMARY KEY violation becomes ``Conflict``, a
FOREIGN KEY one ``NotFound`` (callers pass messages that name the record), anything else
``PluginError``. SQLite's messages name tables and columns, never bound values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from valetkey_hookspecs.errors import Conflict, NotFound, PluginError, ValetkeyError
from valetkey_hookspecs.files import is_private, private_dir

from .migrations import MIGRATIONS, apply_migrations, user_version

if TYPE_CHECKING:
    import aiosqlite

T = TypeVar("T")
Params = Sequence[Any] | Mapping[str, Any]
log = logging.getLogger(__name__)

#: in-place commits between two checkpoints run by the worker (about SQLite's own 1000 pages)
CHECKPOINT_EVERY = 500

#: pragmas ``Database.pragma`` may read (diagnostics and tests)
READABLE_PRAGMAS = frozenset(
    {"journal_mode", "synchronous", "foreign_keys", "busy_timeout", "user_version"}
)


def _prepare_files(path: Path) -> None:
    """Make sure the database file exists with mode 0600, in a 0700 folder if we create it."""
    parent = path.parent
    if not parent.exists():
        private_dir(parent)
    elif not is_private(parent):
        log.warning("the folder of the sqlite store %s is readable by others", parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _tighten_sidecars(path: Path) -> None:
    """Make the -wal / -shm files 0600 (SQLite copies the database's mode; this makes sure)."""
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        try:
            if sidecar.stat().st_mode & 0o077:
                sidecar.chmod(0o600)
        except FileNotFoundError:
            continue


def _integrity_error(exc: sqlite3.IntegrityError, errors: Mapping[str, ValetkeyError]) -> Exception:
    """The valetkey error for a constraint failure: the first ``errors`` key found in SQLite's
    message (``"FOREIGN KEY"``, ``"spokes.name"``, ...), else a generic one of the right type."""
    message = str(exc)
    for needle, error in errors.items():
        if needle in message:
            return error
    if "FOREIGN KEY" in message:
        return NotFound(f"a record this one refers to does not exist ({message})")
    return Conflict(f"the record exists already ({message})")


class Database:
    """One aiosqlite connection to one SQLite file, opened with WAL and migrations applied."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int = 5000,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.migrations = tuple(migrations)
        self._conn: aiosqlite.Connection | None = None
        self._run: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None
        self._raw: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._inplace_commits = 0
        self._lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        """True between a successful ``open()`` and ``close()``."""
        return self._conn is not None

    async def open(self) -> None:
        """Connect, set the pragmas and apply pending migrations; a no-op when already open."""
        async with self._lock:
            if self._conn is not None:
                return
            import aiosqlite

            try:
                _prepare_files(self.path)
            except OSError as exc:
                raise PluginError(
                    f"cannot create the sqlite store {self.path}: {exc.strerror}"
                ) from exc
            conn = aiosqlite.connect(
                self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000
            )
            try:
                await conn
                if not hasattr(conn, "_execute"):  # pragma: no cover - guards an aiosqlite change
                    raise PluginError("this aiosqlite version has no Connection._execute")
                self._run = cast("Callable[[Callable[[], Any]], Awaitable[Any]]", conn._execute)
                self._raw = conn._conn
                self._conn = conn
                await self.call(self._setup)
                self._reader = self._open_reader()
                self._writer = self._open_writer()
            except BaseException:
                self._conn = self._run = self._raw = None
                await conn.close()
                raise
            _tighten_sidecars(self.path)

    def _open_reader(self) -> sqlite3.Connection:
        """A read-only connection for single-row reads on the hot path (see ``read_now``)."""
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.row_factory = sqlite3.Row
        reader.execute("PRAGMA query_only = ON")
        reader.execute("PRAGMA busy_timeout = 50")
        return reader

    def _open_writer(self) -> sqlite3.Connection:
        """A connection for short write transactions on the event loop's thread (see
        ``transaction_now``): it never waits for a lock and never checkpoints."""
        writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        writer.row_factory = sqlite3.Row
        writer.execute("PRAGMA busy_timeout = 0")
        writer.execute("PRAGMA foreign_keys = ON")
        writer.execute("PRAGMA synchronous = NORMAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        return writer

    async def transaction_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A short write transaction run right here on the event loop's thread: in WAL mode with
        ``synchronous = NORMAL`` a commit does not fsync, so a few-row transaction takes tens of
        microseconds — less than the hop to the worker thread. If the write lock is held (by
        another process, or this store's worker), it does not wait: the transaction goes
        through the worker instead, which waits with the busy timeout. Checkpoints stay with
        the worker (one every ``CHECKPOINT_EVERY`` in-place commits)."""
        writer = self._writer
        if writer is None:
            return await self.transaction(fn)
        try:
            writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # locked: let the worker wait for it
            return await self.transaction(fn)
        try:
            result = fn(writer)
            writer.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            writer.execute("ROLLBACK")
            raise _integrity_error(exc, {}) from exc
        except sqlite3.Error as exc:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            raise PluginError(f"sqlite store {self.path}: {exc}") from exc
        except BaseException:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            raise
        self._inplace_commits += 1
        if self._inplace_commits % CHECKPOINT_EVERY == 0:
            await self.checkpoint_passive()
        return result

    async def checkpoint_passive(self) -> None:
        """Copy what the WAL holds into the database file as far as readers allow (on the
        worker; the in-place writer never checkpoints)."""
        await self.call(lambda raw: raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    async def read_now(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """One indexed single-row read, run right here on the event loop's thread.

        A WAL reader never waits for writers, and such a read takes microseconds — far less
        than the hop to aiosqlite's worker thread (~90 µs, ``bench/broker_vend.py``). If the
        database is busy anyway (a checkpoint), the read goes through the worker thread.
        """
        reader = self._reader
        if reader is None:
            return await self.fetchone(sql, params)
        try:
            rows = reader.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return await self.fetchone(sql, params)
        return rows[0] if rows else None

    def _setup(self, raw: sqlite3.Connection) -> int:
        raw.row_factory = sqlite3.Row
        raw.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms):d}")
        raw.execute("PRAGMA foreign_keys = ON")
        mode = str(raw.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if mode.lower() != "wal":
            raise PluginError(
                f"the sqlite store {self.path} cannot use WAL mode (journal_mode is {mode}); "
                "put it on a local file system"
            )
        raw.execute("PRAGMA synchronous = NORMAL")
        return apply_migrations(raw, self.migrations)

    async def close(self) -> None:
        """Close the connection; idempotent."""
        async with self._lock:
            conn, self._conn, self._run, self._raw = self._conn, None, None, None
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
            if conn is not None:
                await conn.close()

    async def call(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        errors: Mapping[str, ValetkeyError] | None = None,
    ) -> T:
        """Run ``fn(connection)`` on the worker thread in one hop (autocommit: each statement
        is its own transaction unless ``fn`` opens one)."""
        run, raw = self._run, self._raw
        if run is None or raw is None:
            raise PluginError(
                f"the sqlite store {self.path} is not open (the kernel awaits store.open() first)"
            )
        try:
            result: T = await run(partial(fn, raw))
        except sqlite3.IntegrityError as exc:
            raise _integrity_error(exc, errors or {}) from exc
        except sqlite3.Error as exc:
            raise PluginError(f"sqlite store {self.path}: {exc}") from exc
        return result

    async def transaction(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        errors: Mapping[str, ValetkeyError] | None = None,
    ) -> T:
        """Run ``fn(connection)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, in one hop; any
        exception rolls everything back."""

        def body(raw: sqlite3.Connection) -> T:
            raw.execute("BEGIN IMMEDIATE")
            try:
                result = fn(raw)
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise
            return result

        return await self.call(body, errors=errors)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Every row of one statement."""
        return await self.call(lambda raw: raw.execute(sql, params).fetchall())

    async def checkpoint(self) -> None:
        """``PRAGMA wal_checkpoint(FULL)``: every committed transaction reaches the synced
        database file."""

        def run(raw: sqlite3.Connection) -> None:
            raw.execute("PRAGMA wal_checkpoint(FULL)").fetchall()

        await self.call(run)

    async def fetchone(
        self, sql: str, params: Params = (), *, errors: Mapping[str, ValetkeyError] | None = None
    ) -> sqlite3.Row | None:
        """The first row of one statement (the whole statement runs, e.g. ``RETURNING``)."""

        def one(raw: sqlite3.Connection) -> sqlite3.Row | None:
            rows = raw.execute(sql, params).fetchall()
            return rows[0] if rows else None

        return await self.call(one, errors=errors)

    async def execute(
        self, sql: str, params: Params = (), *, errors: Mapping[str, ValetkeyError] | None = None
    ) -> int:
        """Run one statement; return how many rows it changed."""
        return await self.call(lambda raw: raw.execute(sql, params).rowcount, errors=errors)

    async def schema_version(self) -> int:
        """``PRAGMA user_version``."""
        return await self.call(user_version)

    async def pragma(self, name: str) -> Any:
        """The value of one of ``READABLE_PRAGMAS``."""
        if name not in READABLE_PRAGMAS:
            raise PluginError(f"pragma {name!r} is not readable here")
        return await self.call(lambda raw: raw.execute(f"PRAGMA {name}").fetchone()[0])
