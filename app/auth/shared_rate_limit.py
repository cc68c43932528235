"""The per-credential rate limit enforced across the fleet, in Redis (REDIS_URL).

One atomic Lua script per request (GCRA, the token bucket's exact equivalent with a single
number per credential: the time at which its allowance is next full), so N replicas share one
allowance of RATE_LIMIT_PER_MINUTE with bursts of RATE_LIMIT_BURST. Redis is an optimisation,
not a dependency: when it is down or slower than REDIS_TIMEOUT_SECONDS the request is limited
by this process's own buckets instead (as without Redis), a warning is logged at most once a
minute, a metric counts it, and Redis is tried again after a short pause.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.auth.rate_limit import InMemoryRateLimiter

logger = logging.getLogger("app.auth")

# Key names carry the credential's kind, organization and id, never a secret.
KEY_PREFIX = "orbit:rate:"
# After a failure, requests do not wait on Redis again for this long.
PAUSE_AFTER_FAILURE_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0

# KEYS[1]: the credential. ARGV: emission interval (ms per request), burst. Returns 0 when the
# request is allowed, else the milliseconds until it would be. Redis's clock, so replicas'
# clocks do not matter.
GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + interval - interval * burst
if allow_at > now then return allow_at - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return 0
"""


def redis_client(url: str, timeout: float) -> Redis:
    """A client whose every socket operation gives up after `timeout`; it reconnects by itself
    on the next command after a failure."""
    client: Redis = Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
    )
    return client


class RedisRateLimiter:
    def __init__(
        self,
        redis: Redis,
        per_minute: int,
        burst: int,
        fallback: InMemoryRateLimiter,
        *,
        timeout: float,
        on_fallback: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(GCRA)
        self._interval_ms = 60_000 / per_minute
        self._burst = burst
        self._fallback = fallback
        self._timeout = timeout
        self._on_fallback = on_fallback
        self._monotonic = monotonic
        self._paused_until = 0.0
        self._warned_at = -math.inf

    async def retry_after(self, credential: str) -> int | None:
        if self._monotonic() >= self._paused_until:
            try:
                async with asyncio.timeout(self._timeout):
                    wait_ms = await self._script(
                        keys=[KEY_PREFIX + credential], args=[self._interval_ms, self._burst]
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
            else:
                # The local buckets are not told: they are only the fallback.
                return None if not wait_ms else max(1, math.ceil(float(wait_ms) / 1000))
        if self._on_fallback is not None:
            self._on_fallback()
        return self._fallback.take(credential)

    def _failed(self, exc: BaseException) -> None:
        now = self._monotonic()
        self._paused_until = now + PAUSE_AFTER_FAILURE_SECONDS
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            logger.warning(
                "Redis unavailable for rate limiting (%s); limiting per process meanwhile",
                type(exc).__name__,
            )

    async def close(self) -> None:
        await self._redis.aclose()
