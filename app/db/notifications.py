"""Postgres LISTEN/NOTIFY for the service: one connection of its own per process, outside the
pool (a listening session must stay put, so behind PgBouncer in transaction mode it needs
DATABASE_LISTEN_URL pointing at Postgres or a session-mode pool), re-established with backoff
whenever it is lost. Needs no Redis: every replica already talks to Postgres."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from app.db.connection import asyncpg_dsn

logger = logging.getLogger("app.db")

APPLICATION_NAME = "orbit-exports-listen"
# The first and the longest wait between attempts to listen again.
CHECK_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0


async def listen_forever(
    url: str,
    channel: str,
    on_message: Callable[[str], None],
    on_connected: Callable[[], None] | None = None,
    connect_timeout: float = 5.0,
    on_lost: Callable[[], None] | None = None,
) -> None:
    """Call `on_message(payload)` for every notification on `channel` until cancelled,
    `on_connected()` each time listening (re)starts (messages sent meanwhile were missed) and
    `on_lost()` each time it stops."""
    backoff = CHECK_SECONDS
    while True:
        connection = None
        try:
            connection = await asyncpg.connect(
                asyncpg_dsn(url),
                timeout=connect_timeout,
                server_settings={"application_name": APPLICATION_NAME},
            )
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _, event=lost: event.set())
            await connection.add_listener(channel, lambda *args: on_message(str(args[3])))
            if on_connected is not None:
                on_connected()
            backoff = CHECK_SECONDS
            await lost.wait()
            if on_lost is not None:
                on_lost()
            logger.warning("listening connection for %s lost; reconnecting", channel)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            logger.warning("cannot listen on %s (%s); retrying", channel, type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        finally:
            if connection is not None and not connection.is_closed():
                connection.terminate()
