"""The per-credential rate limit enforced across the fleet, in Redis (REDIS_URL).

GCRA (the token bucket's exact equivalent with a single number per credential: the time at
which its allowance is next full), evaluated by an atomic Lua script with Redis's clock, so N
replicas share one allowance of RATE_LIMIT_PER_MINUTE with bursts of RATE_LIMIT_BURST. When
Redis is down or slow (`RedisGuard`), the request is limited by this process's own buckets, as
without Redis.

The checks a process has waiting go to Redis together: one script call decides, in arrival
order and atomically, for every request that arrived while the previous call was out. Each
request still gets its own GCRA decision, exactly as with one call each, but the round trip and
redis-py's work per command (about 170 µs of CPU here, as much as half of a request) are paid
once per batch instead of once per request (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from functools import partial

from redis.exceptions import ResponseError

from app.auth.rate_limit import InMemoryRateLimiter
from app.core.shared_state import RedisGuard, Unavailable


# Key names carry the deployment's prefix and the credential's kind, organization and id, never
# a secret. The hash tag ({...}) keeps every rate key in one Redis Cluster slot, which a
# multi-key script requires.
def rate_key_prefix(prefix: str) -> str:
    return "{" + prefix + "rate}:"


# At most this many credentials in one script call: the script runs inside Redis, which
# serves nothing else meanwhile; 256 GCRA steps take well under a millisecond.
MAX_BATCH = 256

# KEYS: the credentials of the waiting requests, in arrival order (repeats allowed: each sees
# the ones before it). ARGV: emission interval (ms per request), burst. Returns, per key, 0
# when the request is allowed, else the whole milliseconds until it would be.
GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local waits = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local allow_at = tat + interval - interval * burst
  if allow_at > now then
    waits[i] = math.ceil(allow_at - now)
  else
    local new_tat = tat + interval
    redis.call('SET', key, new_tat, 'PX', math.ceil(new_tat - now) + 1000)
    waits[i] = 0
  end
end
return waits
"""


class RedisRateLimiter:
    def __init__(
        self,
        guard: RedisGuard,
        per_minute: int,
        burst: int,
        fallback: InMemoryRateLimiter,
        *,
        prefix: str,
    ) -> None:
        self._guard = guard
        self._key_prefix = rate_key_prefix(prefix)
        self._script = guard.redis.register_script(GCRA)
        self._fallback = fallback
        self.configure(per_minute, burst)
        self._waiting: list[tuple[str, asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None

    def configure(self, per_minute: int, burst: int) -> None:
        """New limits (a reload): GCRA's state is a time, valid under any rate."""
        self._interval_ms = 60_000 / per_minute
        self._burst = burst
        self._fallback.configure(per_minute, burst)

    async def retry_after(self, credential: str) -> int | None:
        loop = asyncio.get_running_loop()
        decision: asyncio.Future[int] = loop.create_future()
        self._waiting.append((self._key_prefix + credential, decision))
        if self._sender is None:
            # A context of its own: it serves many requests, not the one that started it (whose
            # request id would otherwise be on the sender's log lines).
            self._sender = loop.create_task(self._send_batches(), context=contextvars.Context())
        try:
            wait_ms = await decision
        except Unavailable:
            return self._fallback.take(credential)
        # The local buckets are not told: they are only the fallback.
        return None if not wait_ms else max(1, math.ceil(wait_ms / 1000))

    async def _send_batches(self) -> None:
        """Until nobody waits: one script call for the waiting requests (up to MAX_BATCH),
        while the next ones gather."""
        batch: list[tuple[str, asyncio.Future[int]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    waits = await self._guard.run(partial(self._decide, [k for k, _ in batch]))
                except Unavailable:
                    _fail(batch)
                else:
                    for (_, decision), wait in zip(batch, waits, strict=True):
                        if not decision.done():  # its request may have been cancelled
                            decision.set_result(wait)
                batch = []
        finally:
            # Cancelled (the process stops) or a bug: nobody is left waiting; they fall back.
            _fail(batch + self._waiting)
            self._waiting = []
            self._sender = None

    async def _decide(self, keys: list[str]) -> list[int]:
        waits = await self._script(keys=keys, args=[self._interval_ms, self._burst])
        # Not our script's answer (another script under its name?): an outage, not a 500.
        if not (
            isinstance(waits, list)
            and len(waits) == len(keys)
            and all(isinstance(wait, int) for wait in waits)
        ):
            raise ResponseError("the rate-limit script answered something else")
        return waits


def _fail(batch: list[tuple[str, asyncio.Future[int]]]) -> None:
    for _, decision in batch:
        if not decision.done():
            decision.set_exception(Unavailable())
