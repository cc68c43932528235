"""Download tokens shared by the fleet through Redis (REDIS_URL): one B2 authorization per file
per token lifetime across every replica, not per process.

A lookup tries this process's LRU first, then Redis. A miss is minted by one replica only: it
takes a short lock (`SET NX PX`), mints, and publishes the token; the others wait for it (up to
`wait_seconds`) and take it, or mint their own if it never comes or would outlive their export.
Tokens are secrets: the key names are a hash of bucket and file name, entries expire with their
token, and nothing here logs a value. When Redis is down or slow (`RedisGuard`) every replica
works alone, as without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

from app.core.metrics import LookupCounts
from app.core.shared_state import RedisGuard, Unavailable
from app.storage.token_cache import FileKey, InMemoryTokenCache, SignedToken

TOKEN_PREFIX = "orbit:token:"  # noqa: S105 - a key name, not a secret
LOCK_PREFIX = "orbit:mint:"
POLL_SECONDS = 0.025

# Deletes the mint lock only if this replica still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _digest(key: FileKey) -> str:
    bucket, file_name = key
    return hashlib.sha256(f"{bucket}\n{file_name}".encode()).hexdigest()


class RedisTokenCache:
    def __init__(
        self,
        guard: RedisGuard,
        local: InMemoryTokenCache,
        *,
        wait_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._guard = guard
        self._redis = guard.redis
        self._release = guard.redis.register_script(_RELEASE)
        self._local = local
        self._wait_seconds = wait_seconds
        self._lock_ms = max(1, int(wait_seconds * 1000))
        self._monotonic = monotonic
        self.counts: LookupCounts = local.counts

    async def get(
        self, key: FileKey, now: datetime, not_after: datetime | None
    ) -> SignedToken | None:
        token = await self._local.get(key, now, not_after)
        if token is None:
            token = await self._shared(key, now, not_after)
            if token is not None:
                # The local lookup counted a miss; the fleet had it after all.
                self.counts.misses -= 1
                self.counts.hits += 1
        return token

    async def put(self, key: FileKey, token: SignedToken) -> None:
        await self._local.put(key, token)
        lifetime_ms = int((token.expires_at.timestamp() - time.time()) * 1000)
        if lifetime_ms <= 0:
            return
        value = json.dumps({"url": token.url, "expiresAt": token.expires_at.isoformat()})
        with contextlib.suppress(Unavailable):
            await self._guard.run(
                lambda: self._redis.set(TOKEN_PREFIX + _digest(key), value, px=lifetime_ms)
            )

    async def shared_mint(
        self,
        key: FileKey,
        now: datetime,
        not_after: datetime | None,
        mint: Callable[[], Awaitable[SignedToken]],
    ) -> SignedToken:
        lock, nonce = LOCK_PREFIX + _digest(key), uuid.uuid4().hex
        try:
            mine = await self._guard.run(
                lambda: self._redis.set(lock, nonce, nx=True, px=self._lock_ms)
            )
        except Unavailable:
            return await mint()
        if mine:
            try:
                return await mint()
            finally:
                with contextlib.suppress(Unavailable):  # else the lock expires by itself
                    await self._guard.run(lambda: self._release(keys=[lock], args=[nonce]))
        deadline = self._monotonic() + self._wait_seconds
        while self._monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            token = await self._shared(key, now, not_after)
            if token is not None:
                return token
        return await mint()

    async def _shared(
        self, key: FileKey, now: datetime, not_after: datetime | None
    ) -> SignedToken | None:
        try:
            raw = await self._guard.run(lambda: self._redis.get(TOKEN_PREFIX + _digest(key)))
        except Unavailable:
            return None
        if raw is None:
            return None
        data = json.loads(raw)
        token = SignedToken(str(data["url"]), datetime.fromisoformat(data["expiresAt"]))
        if not self._local.usable(token, now, not_after):
            return None
        await self._local.put(key, token)
        return token
