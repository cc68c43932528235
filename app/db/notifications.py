"""Postgres LISTEN/NOTIFY for the service: one connection of its own per process, outside the
pool (a listening session must stay put, so behind PgBouncer in transaction mode it needs
DATABASE_LISTEN_URL pointing at Postgres or a session-mode pool), re-established with backoff
whenever it is lost. Needs no Redis: every replica already talks to Postgres.

A connection can die without a word (a NAT or load balancer's idle timeout, a failover to
another host), and a LISTEN through a transaction-mode pooler succeeds but hears nothing. So
the listener trusts only what it has seen: every half LISTEN_HEARTBEAT_SECONDS it sends itself a
probe (a NOTIFY on a channel of its own, through the pool, as any change would arrive) and
waits as long to hear it. Only once a probe came back does it count as listening (and tell the
caches they can rely on announcements); a probe that does not come back ends the connection and
a new one is made. A listen URL that never delivers is named in one warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from app.db.asyncpg_compat import Keepalive, enable_keepalive
from app.db.connection import asyncpg_dsn

logger = logging.getLogger("app.db")

APPLICATION_NAME = "orbit-exports-listen"
# The first and the longest wait between attempts to listen again.
CHECK_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
# Probes go to a channel per process: no replica hears another's.
PROBE_CHANNEL_PREFIX = "orbit_listen_probe_"
# How a probe is sent (through the pool, as every change is announced).
NOTIFY_SQL = "SELECT pg_notify($1, $2)"


class _NotHeard(Exception):
    """A probe did not come back: the connection hears nothing (or, `sent` False, the probe
    could not even be sent through the pool, so nothing can be verified)."""

    def __init__(self, sent: bool) -> None:
        super().__init__()
        self.sent = sent


class Listener:
    def __init__(
        self,
        url: str,
        channel: str,
        on_message: Callable[[str], None],
        *,
        send_probe: Callable[[str, str], Awaitable[object]],
        heartbeat_seconds: float,
        on_connected: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_listening: Callable[[bool], None] | None = None,
        keepalive: Keepalive | None = None,
        connect_timeout: float = 5.0,
        setting: str = "DATABASE_LISTEN_URL",
    ) -> None:
        self._url = url
        self._channel = channel
        self._on_message = on_message
        self._send_probe = send_probe
        self._half_beat = heartbeat_seconds / 2
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._on_listening = on_listening
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._setting = setting
        self._probe_channel = PROBE_CHANNEL_PREFIX + uuid.uuid4().hex[:16]
        self._heard: dict[str, asyncio.Event] = {}
        self._warned_undelivered = False
        self.listening = False

    async def run(self) -> None:
        """Listen until cancelled: `on_message(payload)` for every notification on the channel,
        `on_connected()` each time listening is verified (messages sent meanwhile were missed)
        and `on_lost()` each time it stops."""
        backoff = CHECK_SECONDS
        while True:
            connection = None
            try:
                connection = await self._connect()
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _, event=lost: event.set())
                await connection.add_listener(
                    self._channel, lambda *args: self._on_message(str(args[3]))
                )
                await connection.add_listener(self._probe_channel, self._probe_heard)
                await self._probe(lost)
                self._set_listening(True)
                if self._on_connected is not None:
                    self._on_connected()
                backoff = CHECK_SECONDS
                reason = await self._heartbeat(lost)
                logger.warning(
                    "listening connection for %s %s; reconnecting", self._channel, reason
                )
            except _NotHeard as exc:
                if exc.sent:
                    self._undelivered()
                else:
                    logger.warning(
                        "cannot verify listening on %s: the probe could not be sent; retrying",
                        self._channel,
                    )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                logger.warning(
                    "cannot listen on %s (%s); retrying", self._channel, type(exc).__name__
                )
            finally:
                if connection is not None and not connection.is_closed():
                    connection.terminate()
                if self.listening:
                    self._set_listening(False)
                    if self._on_lost is not None:
                        self._on_lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _connect(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(
            asyncpg_dsn(self._url),
            timeout=self._connect_timeout,
            server_settings={"application_name": APPLICATION_NAME},
        )
        if self._keepalive is not None:
            enable_keepalive(connection, self._keepalive)
        return connection

    async def _heartbeat(self, lost: asyncio.Event) -> str:
        """Probe every half heartbeat until the connection is lost or stops hearing; why."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._half_beat)
            if lost.is_set():
                return "was closed"
            try:
                await self._probe(lost)
            except _NotHeard as exc:
                if not exc.sent:
                    return "could not be verified (the probe could not be sent)"
                return f"heard nothing for {2 * self._half_beat:g} s"

    async def _probe(self, lost: asyncio.Event) -> None:
        """Send a probe through the pool and wait up to half a heartbeat to hear it; _NotHeard
        if it does not come back (or cannot be sent: then nothing can be verified either)."""
        nonce = uuid.uuid4().hex
        heard = self._heard[nonce] = asyncio.Event()
        sent = False
        try:
            async with asyncio.timeout(self._half_beat):
                await self._send_probe(self._probe_channel, nonce)
                sent = True
                await heard.wait()
        except Exception as exc:  # the probe's own failure (the pool's path down) included
            if lost.is_set():
                raise ConnectionError("closed") from None
            raise _NotHeard(sent) from exc
        finally:
            del self._heard[nonce]

    def _probe_heard(self, *args: object) -> None:
        event = self._heard.get(str(args[3]))
        if event is not None:
            event.set()

    def _undelivered(self) -> None:
        if not self._warned_undelivered:
            self._warned_undelivered = True
            logger.warning(
                "%s delivers no notifications (a transaction-mode pooler?, or the path to Postgres"
                " is silent): revocations reach this process only within API_KEY_CACHE_SECONDS;"
                " point %s at Postgres or a session-mode pool",
                self._setting,
                self._setting,
            )
        else:
            logger.info("the listening connection heard nothing; retrying")

    def _set_listening(self, listening: bool) -> None:
        self.listening = listening
        if self._on_listening is not None:
            self._on_listening(listening)
