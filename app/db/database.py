"""The request path's way to Postgres, and the translation of driver failures into
`DatabaseUnavailable`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import asyncpg

from app.core.errors import DatabaseUnavailable
from app.core.settings import Settings
from app.db.asyncpg_compat import Keepalive, enable_keepalive
from app.db.connection import asyncpg_dsn, connect_options, keepalive

logger = logging.getLogger("app.db")


# asyncpg errors that mean "the server cannot answer now".
DRIVER_OUTAGES: tuple[type[Exception], ...] = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # "cannot switch to state ...": the protocol met a connection the server had already
    # closed (a terminated session, a restart, PgBouncer closing it) mid-operation.
    asyncpg.exceptions.InternalClientError,
    OSError,
)
# Of those, the ones that say "this connection is gone" rather than "the server is refusing
# work": the statement is tried once more on a fresh connection. The request path only reads,
# and the one write (the audit's batch insert) skips rows already there, so running it again
# is safe.
LOST_CONNECTION: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's `reset`: nothing to undo. The request path runs single read-only statements
    outside transactions and changes no session state, so asyncpg's default reset (RESET ALL,
    UNLISTEN *, CLOSE ALL, advisory unlocks) would be a second round trip per statement, and
    behind PgBouncer in transaction mode it would run on whatever session comes next."""


async def _with_keepalive(keepalive: Keepalive, connection: asyncpg.Connection) -> None:
    """The pool's `init`, for every connection it opens: TCP keepalives on."""
    enable_keepalive(connection, keepalive)


class Database:
    """The request path's way to Postgres: one read-only statement at a time on a connection
    from asyncpg's pool, within a deadline.

    The pool is asyncpg's own, used as documented: it opens DB_POOL_SIZE connections when
    first needed and keeps them (reconnecting in the background when the server ends one), opens
    up to DB_MAX_OVERFLOW more under load and closes each of those once it has been idle for
    DB_OVERFLOW_IDLE_SECONDS; a connection the server closed is replaced when next acquired.

    Requests queue for a connection in a FIFO gate sized to the pool. asyncpg's pool hands
    connections out through an asyncio queue in which a newcomer can take a connection that
    was just released ahead of those already waiting; under load that starved some requests
    past the deadline (p99 of seconds, spurious 503s) while the median stayed at milliseconds.
    With the gate in front, the pool never has a waiter.
    """

    def __init__(self, settings: Settings, url: str) -> None:
        self.deadline = settings.db_deadline_seconds
        self.max_connections = settings.db_pool_size + settings.db_max_overflow
        self._gate = asyncio.Semaphore(self.max_connections)
        self._pool_timeout = settings.db_pool_timeout_seconds
        self._dsn = asyncpg_dsn(url)
        self._options: dict[str, Any] = connect_options(settings) | {
            "min_size": settings.db_pool_size,
            "max_size": self.max_connections,
            "max_inactive_connection_lifetime": settings.db_overflow_idle_seconds,
            "reset": _keep_session,
            "init": partial(_with_keepalive, keepalive(settings)),
        }
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        # Called with each statement's SQL before it is sent (the tests count statements).
        self.on_statement: Callable[[str], None] | None = None

    async def fetch_row(self, sql: str, *args: Any, deadline: float | None = None) -> Any:
        """The statement's first row (an asyncpg Record) or None."""
        return await self._run("fetchrow", sql, args, deadline)

    async def fetch_all(self, sql: str, *args: Any, deadline: float | None = None) -> list[Any]:
        """Every row of the statement (asyncpg Records)."""
        rows: list[Any] = await self._run("fetch", sql, args, deadline)
        return rows

    async def execute(self, sql: str, *args: Any, deadline: float | None = None) -> str:
        """A statement that writes (the audit's batches): its status line. It may be sent twice
        when its connection is lost mid-way, so it must be idempotent."""
        status: str = await self._run("execute", sql, args, deadline)
        return status

    async def _run(
        self, method: str, sql: str, args: tuple[Any, ...], deadline: float | None
    ) -> Any:
        """Run `sql` with the asyncpg connection's `method` (fetchrow, fetch).

        "The database cannot answer now" (down, unreachable, too slow, every connection busy)
        becomes a 503; real bugs (bad SQL) stay 500s.
        """
        deadline = self.deadline if deadline is None else deadline
        if self.on_statement is not None:
            self.on_statement(sql)
        try:
            async with asyncio.timeout(deadline):
                await self._take_turn()
                try:
                    pool = self._pool or await self._open_pool()
                    try:
                        return await self._run_once(pool, method, sql, args)
                    except LOST_CONNECTION as exc:
                        # Within the same deadline: past it, the request gets its 503.
                        logger.info(
                            "database connection lost (%s); trying again", type(exc).__name__
                        )
                        return await self._run_once(pool, method, sql, args)
                finally:
                    self._gate.release()
        except TimeoutError:
            logger.warning("database unavailable: no answer within %.1fs", deadline)
            raise DatabaseUnavailable() from None
        except (*DRIVER_OUTAGES, asyncpg.QueryCanceledError) as exc:
            # QueryCanceledError: Postgres cut the statement at DB_STATEMENT_TIMEOUT_MS.
            logger.warning("database unavailable: %s", type(exc).__name__)
            raise DatabaseUnavailable() from None

    async def _take_turn(self) -> None:
        """Wait for a connection in turn, at most DB_POOL_TIMEOUT_SECONDS (and the deadline)."""
        if not self._gate.locked():
            await self._gate.acquire()
            return
        try:
            async with asyncio.timeout(self._pool_timeout):
                await self._gate.acquire()
        except TimeoutError:
            logger.warning(
                "database unavailable: no free connection within %.1fs", self._pool_timeout
            )
            raise DatabaseUnavailable() from None

    async def _run_once(
        self, pool: asyncpg.Pool, method: str, sql: str, args: tuple[Any, ...]
    ) -> Any:
        connection = await pool.acquire()
        try:
            return await getattr(connection, method)(sql, *args)
        except BaseException as exc:  # the deadline's cancellation included
            if not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, DRIVER_OUTAGES):
                # Interrupted mid-protocol or broken: abort the socket now (a polite close, or
                # the cancel request asyncpg would send, can hang on a stalled server); the
                # pool opens a new connection in its place.
                connection.terminate()
            raise
        finally:
            await pool.release(connection)

    async def open(self) -> None:
        """Open the pool now, so the first requests do not wait for DB_POOL_SIZE connections.
        Postgres being down is not an error here: the service starts and says it is not ready,
        and the first statement after Postgres returns opens the pool."""
        try:
            async with asyncio.timeout(self.deadline):
                await self._open_pool()
        except (TimeoutError, *DRIVER_OUTAGES, asyncpg.PostgresError) as exc:
            logger.warning("database not reachable at start: %s", type(exc).__name__)

    async def _open_pool(self) -> asyncpg.Pool:
        """asyncpg's pool, created at the first statement rather than at start, so the service
        starts (and says it is not ready) while Postgres is down. A failed attempt leaves
        nothing behind; the next statement tries again."""
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self._dsn, **self._options)
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def reached(self) -> bool:
        """Whether the database has been reached since start (its pool was opened)."""
        return self._pool is not None

    def pool_size(self) -> int:
        """Connections open now."""
        return 0 if self._pool is None else int(self._pool.get_size())

    def in_use(self) -> int:
        """Connections running a statement now."""
        if self._pool is None:
            return 0
        return int(self._pool.get_size() - self._pool.get_idle_size())

    async def ping(self, deadline: float) -> None:
        """Raises DatabaseUnavailable unless the database answers within `deadline` seconds."""
        await self.fetch_row("SELECT 1", deadline=deadline)
