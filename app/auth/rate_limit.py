"""Per-credential rate limiting: a token bucket per API key or dashboard user.

The request path sees only the `RateLimiter` interface; the composition root picks the
implementation. `InMemoryRateLimiter` keeps each worker's own buckets, so with N processes a
credential can reach N times the configured rate; the limit is a guard against runaway clients,
not billing. A shared (Redis) limiter plugs in behind the same interface.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

# Idle buckets beyond this many are forgotten (least recently used first); a forgotten bucket
# simply starts full again, which only ever errs on the generous side.
MAX_TRACKED_CREDENTIALS = 100_000


class RateLimiter(Protocol):
    async def retry_after(self, credential: str) -> int | None:
        """Take one request from `credential`'s allowance: None if allowed, else whole seconds
        to wait before the next one would be."""

    def configure(self, per_minute: int, burst: int) -> None:
        """New limits (a reload)."""


class InMemoryRateLimiter:
    def __init__(
        self, per_minute: int, burst: int, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._monotonic = monotonic
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.configure(per_minute, burst)

    def configure(self, per_minute: int, burst: int) -> None:
        """New limits (a reload); buckets carry on from where they are."""
        self.rate = per_minute / 60.0
        self.burst = float(burst)

    async def retry_after(self, credential: str) -> int | None:
        return self.take(credential)

    def take(self, credential: str) -> int | None:
        """Take one token for `credential`; None if allowed, else whole seconds to wait."""
        now = self._monotonic()
        tokens, updated = self._buckets.pop(credential, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        if tokens >= 1:
            self._buckets[credential] = (tokens - 1, now)
            wait = None
        else:
            self._buckets[credential] = (tokens, now)
            wait = max(1, math.ceil((1 - tokens) / self.rate))
        if len(self._buckets) > MAX_TRACKED_CREDENTIALS:
            self._buckets.popitem(last=False)
        return wait
