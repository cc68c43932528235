"""Redis as the fleet's shared state (REDIS_URL): an optimisation, never a dependency.

`RedisGuard` runs one Redis operation under REDIS_TIMEOUT_SECONDS; on failure it says so (the
caller then uses its own process's state), logs a warning at most once a minute per component,
calls the component's fallback callback (a metric), and lets requests skip Redis for a second
before trying again, so a Redis outage costs requests nothing after the first failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.engine import make_url

from app.core.local_secrets import persistent_secret
from app.core.sealing import length_prefixed
from app.core.settings import Settings

if TYPE_CHECKING:
    # redis-py is imported only with REDIS_URL set: it loads much on import (OpenTelemetry's
    # SDK among it, when installed).
    from redis.asyncio import Redis

logger = logging.getLogger("app.shared_state")

T = TypeVar("T")

PAUSE_AFTER_FAILURE_SECONDS = 1.0
# TCP keepalives on Redis connections: probe after 10 s of silence, every 3 s, 3 times.
REDIS_KEEPALIVE = (
    {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 3, socket.TCP_KEEPCNT: 3}
    if hasattr(socket, "TCP_KEEPIDLE")
    else {}
)
WARN_EVERY_SECONDS = 60.0


def key_prefix(settings: Settings, database_url: str) -> str:
    """REDIS_KEY_PREFIX, or "orbit:" and a digest of the database's host, port and name: two
    deployments with two databases never share a key, whatever Redis they share."""
    if settings.redis_key_prefix is not None:
        return settings.redis_key_prefix
    url = make_url(database_url)
    host = url.host or str(url.query.get("host", ""))
    where = length_prefixed(host, str(url.port or ""), url.database or "")
    return f"orbit:{hashlib.sha256(where).hexdigest()[:12]}:"


def shared_state_secret(settings: Settings) -> bytes:
    """SHARED_STATE_SECRET; in development without one, a secret made once in the data folder
    (production refuses to serve with REDIS_URL and no secret)."""
    if settings.shared_state_secret is not None:
        return settings.shared_state_secret.get_secret_value().encode()
    return persistent_secret(settings.orbit_data_dir / "shared-state-secret").encode()


def redis_client(url: str, timeout: float, *, single_connection: bool = False) -> Redis:
    """A client whose socket operations give up after `timeout`; it reconnects by itself on
    the next command after a failure. `single_connection`: one connection instead of a pool,
    for a user that never has two commands out at once (a fifth less CPU per command here)."""
    from redis.asyncio import Redis

    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        single_connection_client=single_connection,
        # A connection whose path died silently is found by the kernel, not only by a timeout.
        socket_keepalive=True,
        socket_keepalive_options=REDIS_KEEPALIVE,
    )
    return client


class Unavailable(Exception):
    """Redis did not answer in time (or is paused after a failure): use local state."""


class RedisGuard:
    def __init__(
        self,
        redis: Redis,
        component: str,
        *,
        timeout: float,
        on_fallback: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.exceptions import RedisError

        self._failures = (RedisError, OSError, TimeoutError)
        self.redis = redis
        self._component = component
        self._timeout = timeout
        self._on_fallback = on_fallback
        self._monotonic = monotonic
        self._paused_until = 0.0
        self._warned_at = -math.inf

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation()`'s result, or Unavailable (after counting the fallback)."""
        if self._monotonic() < self._paused_until:
            self._fell_back()
            raise Unavailable
        try:
            async with asyncio.timeout(self._timeout):
                return await operation()
        except self._failures as exc:
            now = self._monotonic()
            self._paused_until = now + PAUSE_AFTER_FAILURE_SECONDS
            if now - self._warned_at >= WARN_EVERY_SECONDS:
                self._warned_at = now
                logger.warning(
                    "Redis unavailable for %s (%s); using this process's own state meanwhile",
                    self._component,
                    type(exc).__name__,
                )
            self._fell_back()
            raise Unavailable from None

    def _fell_back(self) -> None:
        if self._on_fallback is not None:
            self._on_fallback()
