"""The per-credential rate limit enforced across the fleet, in Redis (REDIS_URL).

One atomic Lua script per request (GCRA, the token bucket's exact equivalent with a single
number per credential: the time at which its allowance is next full), so N replicas share one
allowance of RATE_LIMIT_PER_MINUTE with bursts of RATE_LIMIT_BURST. When Redis is down or slow
(`RedisGuard`), the request is limited by this process's own buckets, as without Redis.
"""

from __future__ import annotations

import math

from app.auth.rate_limit import InMemoryRateLimiter
from app.core.shared_state import RedisGuard, Unavailable

# Key names carry the credential's kind, organization and id, never a secret.
KEY_PREFIX = "orbit:rate:"

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


class RedisRateLimiter:
    def __init__(
        self, guard: RedisGuard, per_minute: int, burst: int, fallback: InMemoryRateLimiter
    ) -> None:
        self._guard = guard
        self._script = guard.redis.register_script(GCRA)
        self._interval_ms = 60_000 / per_minute
        self._burst = burst
        self._fallback = fallback

    async def retry_after(self, credential: str) -> int | None:
        try:
            wait_ms = await self._guard.run(
                lambda: self._script(
                    keys=[KEY_PREFIX + credential], args=[self._interval_ms, self._burst]
                )
            )
        except Unavailable:
            return self._fallback.take(credential)
        # The local buckets are not told: they are only the fallback.
        return None if not wait_ms else max(1, math.ceil(float(wait_ms) / 1000))
