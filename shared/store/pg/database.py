"""One asyncpg pool per process, with bounds and timeouts, and a clear error when
PostgreSQL cannot be reached.

Every query goes through `Database`, which waits at most `timeout_s` for a pooled connection
(asyncpg's own `Pool.fetch` would wait for ever when all are busy) and gives each statement
the same bound; asyncpg prepares each statement once per connection and reuses it (its
statement cache), so a repeated lookup costs one Bind/Execute round trip.  Every operation
is timed in ``stanzad_store_db_query_duration_seconds`` under the name its store gives it,
failures are counted by kind in ``stanzad_store_db_errors_total`` (`error_kind`), and the
pool's connections in use and idle are read at each scrape (shared/runtime/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg

from shared.runtime.metrics import (
    DB_CONNECTED,
    DB_ERRORS,
    DB_LATENCY,
    DB_POOL_CONNECTIONS,
    DB_POOL_MAX,
    HistogramTally,
)

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE: Final = 10
DEFAULT_TIMEOUT_S: Final = 5.0
CHECK_S: Final = 5.0  # a service's pool is checked this often when idle (`Database.start`)
RETRY_MAX_S: Final = 5.0  # opening at start is retried with backoff up to this

# What a lost or refused connection raises, besides asyncpg's own errors.
CONNECTION_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError,
                            asyncpg.InterfaceError)


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached, refused the query, or did not answer in time."""


# errors that say nothing about the server: the connection is gone or was never made
_UNREACHABLE: Final = (OSError, DatabaseUnavailable, asyncpg.PostgresConnectionError,
                       asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
                       asyncpg.CrashShutdownError, asyncpg.InterfaceError)


def error_kind(exc: BaseException) -> str | None:
    """The ``kind`` label of ``stanzad_store_db_errors_total`` for a failed operation (one of
    metrics.DB_ERROR_KINDS), or None for what is not a database error (a cancellation, an
    exception of the caller's own code inside a transaction)."""
    if isinstance(exc, (TimeoutError, asyncpg.QueryCanceledError)):
        return "timeout"
    if isinstance(exc, _UNREACHABLE):
        return "unreachable"
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return "constraint"
    if isinstance(exc, asyncpg.DataError):
        return "data"
    if isinstance(exc, asyncpg.PostgresError):
        return "server"
    return None


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


class Database:
    """A bounded pool, made now and opened by `open` (a service builds its stores in its
    constructor and connects in ``start``); ``service`` labels the metrics."""

    def __init__(self, url: str, service: str, *, size: int = DEFAULT_POOL_SIZE,
                 timeout_s: float = DEFAULT_TIMEOUT_S, owner_url: str = "") -> None:
        """``owner_url``: the URL of the role that owns the tables (shared/store/pg/roles.py),
        used only to migrate at `open`; empty: migrate with ``url`` (one role for both)."""
        self.url = url
        self.owner_url = owner_url
        self.service = service
        self.size = size
        self.timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._latency: dict[str, HistogramTally] = {}  # operation -> its tally
        # the series exist once `open` was called: a process that never opens one (an s2s
        # gateway) shows no PostgreSQL at all rather than a lost one
        self._up: bool | None = None
        self._keeper: asyncio.Task[None] | None = None

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
        _watch_pool(self)
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
            self._mark(False)
            raise DatabaseUnavailable(
                f"PostgreSQL at {redact(self.url)} is not reachable "
                f"({exc.__class__.__name__}: {exc}); set STANZAD_DATABASE_URL"
            ) from None
        self._mark(True)
        if migrate:
            try:
                applied = await self._migrate()
            except BaseException:
                await self.close()
                raise
            if applied:
                log.info("database migrated to version %d", applied[-1])

    async def _migrate(self) -> list[int]:
        """`migrations.migrate` as the owner role when ``owner_url`` is set (one connection
        of its own, closed after), else on this pool."""
        from shared.store.pg.migrations import migrate as apply

        if not self.owner_url:
            return await apply(self)
        owner = Database(self.owner_url, f"{self.service}-migrate", size=1,
                         timeout_s=self.timeout_s)
        await owner.open(migrate=False)
        try:
            return await apply(owner)
        finally:
            await owner.close()

    def start(self, *, migrate: bool = True, check_s: float = CHECK_S) -> None:
        """What a service calls at start instead of `open`: opens (and migrates) in the
        background, trying again with backoff for as long as PostgreSQL cannot be reached,
        then checks it every ``check_s`` so that `up` (the service's readiness) follows it
        even when nothing queries.  Until open, and while it is away, operations fail at once
        with DatabaseUnavailable; asyncpg replaces the pool's lost connections by itself, so
        nothing is restarted when it comes back."""
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep(migrate, check_s), name=f"database-{self.service}")

    async def _keep(self, migrate: bool, check_s: float) -> None:
        delay = 0.25
        while self._pool is None:
            try:
                await self.open(migrate=migrate)
            except Exception as exc:  # unreachable, or a migration that failed half-way
                if delay == 0.25:  # the first failure, not every retry
                    log.warning("%s; not ready, trying again until it answers", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        if delay > 0.25:
            log.info("PostgreSQL at %s reachable: ready", redact(self.url))
        was_up = True
        while True:
            await asyncio.sleep(check_s if was_up else min(check_s, 1.0))
            await self.ping()
            if self.up != was_up:
                was_up = self.up
                if was_up:
                    log.info("PostgreSQL reachable again")
                else:
                    log.warning("PostgreSQL not reachable: requests that need it fail")

    @asynccontextmanager
    async def connection(self, operation: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one operation (timed; errors counted by kind and turned
        into DatabaseUnavailable unless they are a constraint or data error the caller may
        want to see)."""
        start = time.perf_counter()
        try:
            async with self.pool.acquire(timeout=self.timeout_s) as conn:
                yield conn
        except BaseException as exc:
            self._observe(operation, start)
            kind = error_kind(exc)
            if kind is not None:
                DB_ERRORS.labels(self.service, operation, kind).inc()
                if kind == "unreachable":
                    self._mark(False)
            if isinstance(exc, (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError,
                                DatabaseUnavailable)) or not isinstance(exc, CONNECTION_ERRORS):
                raise
            raise DatabaseUnavailable(f"{operation}: {exc.__class__.__name__}: {exc}") \
                from exc
        self._observe(operation, start)
        self._mark(True)

    @property
    def up(self) -> bool:
        """The pool is open and the last operation did not find PostgreSQL unreachable."""
        return bool(self._up) and self._pool is not None

    def _mark(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            DB_CONNECTED.labels(self.service).set(1 if up else 0)

    def _observe(self, operation: str, start: float) -> None:
        tally = self._latency.get(operation)
        if tally is None:
            tally = self._latency[operation] = HistogramTally(
                DB_LATENCY.labels(self.service, operation))
        tally.observe(time.perf_counter() - start)

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
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        pool, self._pool = self._pool, None
        if self._up:
            self._mark(False)
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.timeout_s)
        except TimeoutError:
            pool.terminate()


def _watch_pool(db: Database) -> None:
    """Read the pool of ``db`` at each scrape (the newest Database of a service label wins;
    a process has one per service)."""
    ref = weakref.ref(db)

    def count(kind: str) -> float:
        d = ref()
        pool = d._pool if d is not None else None
        if pool is None:
            return 0.0
        idle = pool.get_idle_size()
        return float(idle if kind == "idle" else pool.get_size() - idle)

    for kind in ("in_use", "idle"):
        DB_POOL_CONNECTIONS.labels(db.service, kind).set_function(lambda k=kind: count(k))
    DB_POOL_MAX.labels(db.service).set(db.size)


async def connect(
    url: str,
    service: str,
    *,
    size: int = DEFAULT_POOL_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    migrate: bool = True,
    owner_url: str = "",
) -> Database:
    """A `Database`, opened (see `Database.open`)."""
    db = Database(url, service, size=size, timeout_s=timeout_s, owner_url=owner_url)
    await db.open(migrate=migrate)
    return db


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with: asyncpg rolls back an open transaction
    itself; its default reset query (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, advisory
    unlock) would cost a round trip and ~2 % of a connection manager's login CPU per query,
    and stanzad leaves no session state behind (no SET, LISTEN or cursor; the migrations'
    advisory lock is released by the migrations themselves)."""
