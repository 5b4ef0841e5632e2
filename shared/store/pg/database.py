"""One asyncpg pool per process, with bounds and timeouts, and a clear error when
PostgreSQL cannot be reached.

Every query goes through `Database`, which waits at most `timeout_s` for a pooled connection
(asyncpg's own `Pool.fetch` would wait for ever when all are busy) and gives each statement
the same bound; asyncpg prepares each statement once per connection and reuses it (its
statement cache), so a repeated lookup costs one Bind/Execute round trip.  Failures are
counted in ``stanzad_store_errors_total`` and round trips in
``stanzad_store_command_duration_seconds`` under the operation's name, like Redis's.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg

from shared.store.redis import timed

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE: Final = 10
DEFAULT_TIMEOUT_S: Final = 5.0

# What a lost or refused connection raises, besides asyncpg's own errors.
CONNECTION_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError,
                            asyncpg.InterfaceError)


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached, refused the query, or did not answer in time."""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


class Database:
    """A bounded pool, made now and opened by `open` (a service builds its stores in its
    constructor and connects in ``start``); ``service`` labels the metrics."""

    def __init__(self, url: str, service: str, *, size: int = DEFAULT_POOL_SIZE,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.service = service
        self.size = size
        self.timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("the database is not open yet")
        return self._pool

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self, *, migrate: bool = True) -> None:
        """Open the pool (one connection at once, up to ``size``) and, unless ``migrate`` is
        False, bring the schema up to date (`migrations.migrate`, under an advisory lock).
        Raises DatabaseUnavailable naming the server when it cannot be reached."""
        try:
            self._pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self.size,
                    timeout=self.timeout_s,  # connect
                    command_timeout=self.timeout_s,
                    max_inactive_connection_lifetime=300.0,
                    reset=_keep_session,
                ),
                self.timeout_s * 2,
            )
        except (*CONNECTION_ERRORS, ValueError) as exc:
            raise DatabaseUnavailable(
                f"PostgreSQL at {redact(self.url)} is not reachable "
                f"({exc.__class__.__name__}: {exc}); set STANZAD_DATABASE_URL"
            ) from None
        if migrate:
            from shared.store.pg.migrations import migrate as apply

            try:
                applied = await apply(self)
            except BaseException:
                await self.close()
                raise
            if applied:
                log.info("database migrated to version %d", applied[-1])

    @asynccontextmanager
    async def connection(self, operation: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one operation (timed; errors become DatabaseUnavailable
        unless they are a constraint or data error the caller may want to see)."""
        async with timed(self.service, operation):
            try:
                async with self.pool.acquire(timeout=self.timeout_s) as conn:
                    yield conn
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
                raise
            except CONNECTION_ERRORS as exc:
                raise DatabaseUnavailable(f"{operation}: {exc.__class__.__name__}: {exc}") \
                    from exc

    @asynccontextmanager
    async def transaction(self, operation: str) -> AsyncIterator[asyncpg.Connection]:
        async with self.connection(operation) as conn, conn.transaction():
            yield conn

    async def fetch(self, operation: str, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection(operation) as conn:
            return list(await conn.fetch(query, *args, timeout=self.timeout_s))

    async def fetchrow(self, operation: str, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection(operation) as conn:
            return await conn.fetchrow(query, *args, timeout=self.timeout_s)

    async def fetchval(self, operation: str, query: str, *args: Any) -> Any:
        async with self.connection(operation) as conn:
            return await conn.fetchval(query, *args, timeout=self.timeout_s)

    async def execute(self, operation: str, query: str, *args: Any) -> str:
        async with self.connection(operation) as conn:
            return str(await conn.execute(query, *args, timeout=self.timeout_s))

    async def executemany(self, operation: str, query: str, args: Sequence[Sequence[Any]]) -> None:
        async with self.connection(operation) as conn:
            await conn.executemany(query, args, timeout=self.timeout_s)

    async def ping(self) -> bool:
        try:
            return await self.fetchval("ping", "SELECT 1") == 1
        except DatabaseUnavailable:
            return False

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.timeout_s)
        except TimeoutError:
            pool.terminate()


async def connect(
    url: str,
    service: str,
    *,
    size: int = DEFAULT_POOL_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    migrate: bool = True,
) -> Database:
    """A `Database`, opened (see `Database.open`)."""
    db = Database(url, service, size=size, timeout_s=timeout_s)
    await db.open(migrate=migrate)
    return db


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with: asyncpg rolls back an open transaction
    itself; its default reset query (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, advisory
    unlock) would cost a round trip and ~2 % of a connection manager's login CPU per query,
    and stanzad leaves no session state behind (no SET, LISTEN or cursor; the migrations'
    advisory lock is released by the migrations themselves)."""
