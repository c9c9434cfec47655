"""The store's asyncpg pool: connecting (DSN redacted in every message), migrations under an
advisory lock, and error mapping.

Every repository call is one pool round trip: ``fetch`` / ``fetchrow`` / ``execute`` run one
statement on a pooled connection, ``transaction(fn)`` runs ``fn(connection)`` inside
``BEGIN`` ... ``COMMIT`` on one connection (rolled back on any exception, including a cancelled
caller: asyncpg's transaction context rolls back on the way out).

Errors leave as valetkey errors only: a unique violation becomes ``Conflict`` (or the error the
caller mapped to the constraint's name), a foreign-key violation ``NotFound``, anything else
``PluginError``. Messages use PostgreSQL's primary message only — never its DETAIL line, which
quotes the values — and show the DSN with its password masked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from valetkey_hookspecs.errors import Conflict, NotFound, PluginError, ValetkeyError
from valetkey_hookspecs.redaction import register_secret

from .config import PostgresConfig, dsn_password, redact_dsn
from .migrations import MIGRATIONS, apply_migrations, quote_ident, schema_version

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")
Errors = Mapping[str, ValetkeyError]
log = logging.getLogger(__name__)


def map_error(exc: Exception, errors: Errors | None, where: str) -> Exception:
    """The valetkey error for an asyncpg / connection error (see the module docstring)."""
    import asyncpg

    if isinstance(exc, ValetkeyError):
        return exc
    if isinstance(exc, asyncpg.UniqueViolationError):
        constraint = getattr(exc, "constraint_name", None) or ""
        for needle, error in (errors or {}).items():
            if needle == constraint:
                return error
        return Conflict(f"the record exists already ({constraint or 'unique constraint'})")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        for needle, error in (errors or {}).items():
            if needle == "FOREIGN KEY":
                return error
        return NotFound("a record this one refers to does not exist")
    if isinstance(exc, asyncpg.PostgresError):
        message = getattr(exc, "message", None) or type(exc).__name__
        return PluginError(f"postgres store {where}: {message}")
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError)):
        return PluginError(f"postgres store {where}: {type(exc).__name__}: {exc}")
    return exc


class Database:
    """One asyncpg pool to one database (and schema), opened with migrations applied."""

    def __init__(self, config: PostgresConfig, *, migrations: Sequence[str] = MIGRATIONS) -> None:
        if not config.dsn:
            raise PluginError(
                "[plugin.store-postgres] dsn is not set: give it by reference, e.g. "
                'dsn = { "$env" = "VALETKEY_PG_DSN" }'
            )
        register_secret(dsn_password(config.dsn))
        self.config = config
        self.where = redact_dsn(config.dsn) + (f" schema {config.schema}" if config.schema else "")
        self.migrations = tuple(migrations)
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        """True between a successful ``open()`` and ``close()``."""
        return self._pool is not None

    def _settings(self) -> dict[str, str]:
        settings = {"application_name": "valetkey"}
        if self.config.schema:
            settings["search_path"] = quote_ident(self.config.schema)
        if self.config.statement_timeout > 0:
            settings["statement_timeout"] = str(int(self.config.statement_timeout * 1000))
        return settings

    async def open(self) -> None:
        """Create the pool and apply pending migrations; a no-op when already open."""
        async with self._lock:
            if self._pool is not None:
                return
            import asyncpg

            try:
                pool = await asyncpg.create_pool(
                    self.config.dsn,
                    min_size=min(self.config.pool_min_size, self.config.pool_max_size),
                    max_size=self.config.pool_max_size,
                    timeout=self.config.connect_timeout,
                    server_settings=self._settings(),
                )
            except Exception as exc:
                reason = _describe(exc, dsn_password(self.config.dsn))
                raise PluginError(
                    f"cannot connect the postgres store {self.where}: {reason}"
                ) from None
            try:
                async with pool.acquire() as conn:
                    await apply_migrations(conn, self.config.schema, self.migrations)
            except BaseException as exc:
                await pool.close()
                if isinstance(exc, Exception):
                    raise map_error(exc, None, self.where) from None
                raise
            self._pool = pool

    async def close(self) -> None:
        """Close the pool; idempotent."""
        async with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    def pool(self) -> asyncpg.Pool:
        """The open pool; ``PluginError`` before ``open()``."""
        if self._pool is None:
            raise PluginError(
                f"the postgres store {self.where} is not open (the kernel awaits store.open() "
                "first)"
            )
        return self._pool

    async def fetch(self, sql: str, *args: Any, errors: Errors | None = None) -> list[Any]:
        """Every row of one statement."""
        try:
            rows: list[Any] = await self.pool().fetch(sql, *args)
        except Exception as exc:
            raise map_error(exc, errors, self.where) from None
        return rows

    async def fetchrow(self, sql: str, *args: Any, errors: Errors | None = None) -> Any:
        """The first row of one statement, or None."""
        try:
            return await self.pool().fetchrow(sql, *args)
        except Exception as exc:
            raise map_error(exc, errors, self.where) from None

    async def execute(self, sql: str, *args: Any, errors: Errors | None = None) -> int:
        """Run one statement; return how many rows it changed."""
        try:
            status: str = await self.pool().execute(sql, *args)
        except Exception as exc:
            raise map_error(exc, errors, self.where) from None
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def transaction(
        self,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        errors: Errors | None = None,
    ) -> T:
        """``fn(connection)`` inside one transaction on one pooled connection."""
        try:
            async with self.pool().acquire() as conn, conn.transaction():
                return await fn(conn)
        except Exception as exc:
            raise map_error(exc, errors, self.where) from None

    async def schema_version(self) -> int:
        """The applied schema version."""
        try:
            async with self.pool().acquire() as conn:
                return await schema_version(conn)
        except Exception as exc:
            raise map_error(exc, None, self.where) from None


def _describe(exc: BaseException, password: str | None) -> str:
    """A connection failure in one line, with the password masked should the driver quote
    the DSN."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if password:
        message = message.replace(password, "***")
    return f"{type(exc).__name__}: {message}"
