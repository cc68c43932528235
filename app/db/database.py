"""The request path's way to Postgres, and the translation of driver failures into
`DatabaseUnavailable`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from app.core.errors import DatabaseUnavailable
from app.core.settings import Settings

logger = logging.getLogger("app.db")


# asyncpg errors that mean "the server cannot answer now", for statements sent to the driver
# directly (SQLAlchemy wraps the same errors in DBAPIError for its own statements).
DRIVER_OUTAGES: tuple[type[Exception], ...] = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # "cannot switch to state ...": the protocol met a connection the server had already
    # closed (a terminated session, a restart, PgBouncer closing it) mid-operation.
    asyncpg.exceptions.InternalClientError,
)
# Of those, the ones that say "this connection is gone" rather than "the server is refusing
# work": the statement is tried once more on a fresh connection. The request path only reads,
# so running it again is safe.
LOST_CONNECTION: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)


class Database:
    """The request path's way to Postgres: one read-only statement at a time on connections
    from SQLAlchemy's pool, each within a deadline.

    Statements go to the asyncpg connection under the pooled SQLAlchemy connection: a cached
    prepared statement, one round trip, no transaction around it, none of SQLAlchemy's
    execution and result layers (the profile showed them costing more than the query).

    Requests queue for a connection in a FIFO gate sized to the pool. SQLAlchemy's async pool
    lets a newcomer take a connection that was just returned ahead of those already waiting,
    which under load starved some requests past the deadline (p99 of seconds, spurious 503s)
    while the median stayed at a few milliseconds.

    Healthy connections stay checked out between statements, kept here for the next one: a
    check-out and check-in of SQLAlchemy's async pool runs through a greenlet, 17 µs per
    statement in a tight loop and more under load (docs/performance.md). The pool still
    creates, counts and limits every connection (DB_POOL_SIZE + DB_MAX_OVERFLOW); one that
    failed or was interrupted goes back to it invalidated, never to the next statement.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.deadline = settings.db_deadline_seconds
        self._gate = asyncio.Semaphore(settings.db_pool_size + settings.db_max_overflow)
        self._kept: list[PoolProxiedConnection] = []
        self._pool_size = settings.db_pool_size
        self._overflow_idle = settings.db_overflow_idle_seconds
        self._overflow_used_at = 0.0
        self.in_use = 0

    async def fetch_row(self, sql: str, *args: Any, deadline: float | None = None) -> Any:
        """The statement's first row (an asyncpg Record) or None."""
        return await self._run("fetchrow", sql, args, deadline)

    async def fetch_all(self, sql: str, *args: Any, deadline: float | None = None) -> list[Any]:
        """Every row of the statement (asyncpg Records)."""
        rows: list[Any] = await self._run("fetch", sql, args, deadline)
        return rows

    async def _run(
        self, method: str, sql: str, args: tuple[Any, ...], deadline: float | None
    ) -> Any:
        """Run `sql` with the asyncpg connection's `method` (fetchrow, fetch).

        "The database cannot answer now" (down, unreachable, too slow, pool exhausted) becomes
        a 503; real bugs (bad SQL) stay 500s. A connection that failed or was interrupted
        mid-statement is invalidated from outside any greenlet, which aborts its socket at once
        instead of waiting for a polite close from a server that may be stalled.
        """
        deadline = self.deadline if deadline is None else deadline
        try:
            async with asyncio.timeout(deadline), self._gate:
                try:
                    return await self._run_once(method, sql, args)
                except LOST_CONNECTION as exc:
                    # Within the same deadline: past it, the request gets its 503.
                    logger.info("database connection lost (%s); trying again", type(exc).__name__)
                    return await self._run_once(method, sql, args)
        except TimeoutError:
            logger.warning("database unavailable: no answer within %.1fs", deadline)
            raise DatabaseUnavailable() from None
        except (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError) as exc:
            logger.warning("database unavailable: %s", type(exc).__name__)
            raise DatabaseUnavailable() from None
        except (*DRIVER_OUTAGES, asyncpg.QueryCanceledError) as exc:
            # QueryCanceledError: Postgres cut the statement at DB_STATEMENT_TIMEOUT_MS.
            logger.warning("database unavailable: %s", type(exc).__name__)
            raise DatabaseUnavailable() from None

    async def _run_once(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        fairy = await self._connection()
        self.in_use += 1
        if self.in_use > self._pool_size:
            self._overflow_used_at = time.monotonic()
        try:
            driver = fairy.driver_connection
            assert driver is not None
            return await getattr(driver, method)(sql, *args)
        except BaseException as exc:  # the deadline's cancellation included
            if isinstance(exc, DRIVER_OUTAGES) or not isinstance(exc, asyncpg.PostgresError):
                fairy.invalidate()
            raise
        finally:
            self.in_use -= 1
            # An invalidated connection is already back in the pool, closed.
            if fairy.is_valid:
                self._kept.append(fairy)
                if len(self._kept) > self._pool_size:
                    self._close_idle_overflow()

    async def _connection(self) -> PoolProxiedConnection:
        while self._kept:
            fairy = self._kept.pop()
            driver = fairy.driver_connection
            if driver is not None and not driver.is_closed():
                return fairy
            # Closed while kept (the server restarted, or ended the session): next one.
            fairy.invalidate()
        return await self.engine.raw_connection()

    def _close_idle_overflow(self) -> None:
        """Close the kept connections beyond DB_POOL_SIZE once no statement has needed more than
        DB_POOL_SIZE for DB_OVERFLOW_IDLE_SECONDS. Closing them as soon as enough were idle (what
        SQLAlchemy's pool does) reconnected several times a second under make bench's load."""
        if time.monotonic() - self._overflow_used_at < self._overflow_idle:
            return
        while len(self._kept) > self._pool_size:
            # The least recently used first; invalidating outside a greenlet ends the idle
            # session at once, and its slot goes back to the pool for the next burst.
            self._kept.pop(0).invalidate()

    async def release_kept(self) -> None:
        """Give the kept connections back to the pool (before it is disposed of). A check-in
        may close a surplus connection, which awaits the driver: hence the greenlet."""
        while self._kept:
            await greenlet_spawn(self._kept.pop().close)

    async def close(self) -> None:
        await self.release_kept()
        await self.engine.dispose()

    def pool_size(self) -> int:
        """Connections the pool keeps open (its size, not counting overflow)."""
        pool = self.engine.pool
        return pool.size() if isinstance(pool, QueuePool) else 0

    async def ping(self, deadline: float) -> None:
        """Raises DatabaseUnavailable unless the database answers within `deadline` seconds."""
        await self.fetch_row("SELECT 1", deadline=deadline)
