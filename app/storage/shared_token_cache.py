"""Download tokens shared by the fleet through Redis (REDIS_URL): one B2 authorization per file
per token lifetime across every replica, not per process.

A lookup tries this process's LRU first, then Redis. A miss is minted by one replica only: it
takes a short lock (`SET NX PX`), mints, and publishes the token; the others wait for it (up to
`wait_seconds`) and take it, or mint their own as soon as the lock is gone without a token (the
minting replica gave up), or if the token would outlive their export.

What Redis holds is untrusted on the way back, and useless to whoever reads it:
- Only the token and its expiry are stored, sealed (`app.core.sealing`) and bound to the
  deployment's key prefix, the signer, the bucket and the file name; the URL is rebuilt from
  the export's own row. A value that fails to open, decode or bind is a miss: counted, logged
  at most once a minute, and the file is signed afresh.
- Key names are the prefix and a digest of the length-prefixed signer, B2 key id, sealing key
  id, bucket and file name: no file name, no token, nothing another deployment sharing the
  Redis database would read. A rotated B2 key or shared-state secret starts a new namespace
  (the old values are never looked up again, nor counted as rejected).
When Redis is down or slow (`RedisGuard`) every replica works alone, as without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from app.core.metrics import LookupCounts
from app.core.sealing import Sealer, Unsealable, length_prefixed
from app.core.shared_state import RedisGuard, Unavailable
from app.storage.token_cache import FileKey, InMemoryTokenCache, SignedToken

logger = logging.getLogger("app.storage")

POLL_SECONDS = 0.025
SIGNER = "b2-native"
SEALING_PURPOSE = "download tokens"

# Deletes the mint lock only if this replica still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def redis_keys(prefix: str, b2_key_id: str, sealer: Sealer, key: FileKey) -> tuple[str, str]:
    """The token's and the mint lock's key names for one file."""
    bucket, file_name = key
    parts = length_prefixed(SIGNER, b2_key_id, sealer.key_id, bucket, file_name)
    digest = hashlib.sha256(parts).hexdigest()
    return f"{prefix}token:{digest}", f"{prefix}mint:{digest}"


class RedisTokenCache:
    def __init__(
        self,
        guard: RedisGuard,
        local: InMemoryTokenCache,
        *,
        sealer: Sealer,
        prefix: str,
        b2_key_id: str,
        url_for: Callable[[FileKey, str], str],
        wait_seconds: float,
        on_rejected: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._guard = guard
        self._redis = guard.redis
        self._release = guard.redis.register_script(_RELEASE)
        self._local = local
        self._sealer = sealer
        self._prefix = prefix
        self._b2_key_id = b2_key_id
        self._url_for = url_for
        self._wait_seconds = wait_seconds
        self._lock_ms = max(1, int(wait_seconds * 1000))
        self._on_rejected = on_rejected
        self._warned_at = -math.inf
        self._monotonic = monotonic
        self.counts: LookupCounts = local.counts

    def rotate(self, b2_key_id: str) -> None:
        """Tokens of another B2 key: dropped here, never looked up in Redis again."""
        self._b2_key_id = b2_key_id
        self._local.clear()

    def reseal(self, secret: bytes) -> None:
        """A new shared-state secret: values sealed with the old one are no longer looked up."""
        self._sealer = Sealer(secret, SEALING_PURPOSE)

    def _keys(self, key: FileKey) -> tuple[str, str]:
        return redis_keys(self._prefix, self._b2_key_id, self._sealer, key)

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
        expires_ms = int(token.expires_at.timestamp() * 1000)
        plain = struct.pack(">q", expires_ms) + token.credential.encode()
        value = self._sealer.seal(plain, self._bound_to(key))
        token_key, _ = self._keys(key)
        with contextlib.suppress(Unavailable):
            await self._guard.run(lambda: self._redis.set(token_key, value, px=lifetime_ms))

    async def shared_mint(
        self,
        key: FileKey,
        now: datetime,
        not_after: datetime | None,
        mint: Callable[[], Awaitable[SignedToken]],
    ) -> SignedToken:
        token_key, lock = self._keys(key)
        nonce = uuid.uuid4().hex
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
            try:
                raw, held = await self._guard.run(lambda: self._redis.mget(token_key, lock))
            except Unavailable:
                break
            token = self._usable(key, raw, now, not_after)
            if token is not None:
                return token
            if held is None:
                # The minting replica is done and left nothing this export can use (it failed,
                # or its token outlives this export): no point waiting any longer.
                break
        return await mint()

    async def _shared(
        self, key: FileKey, now: datetime, not_after: datetime | None
    ) -> SignedToken | None:
        token_key, _ = self._keys(key)
        try:
            raw = await self._guard.run(lambda: self._redis.get(token_key))
        except Unavailable:
            return None
        return self._usable(key, raw, now, not_after)

    def _usable(
        self, key: FileKey, raw: object, now: datetime, not_after: datetime | None
    ) -> SignedToken | None:
        """The token in `raw` for this file, if it opens and suits this export."""
        if raw is None:
            return None
        try:
            plain = self._sealer.open(raw if isinstance(raw, bytes) else b"", self._bound_to(key))
            (expires_ms,) = struct.unpack(">q", plain[:8])
            credential = plain[8:].decode()
            expires_at = datetime.fromtimestamp(expires_ms / 1000, UTC)
        except (Unsealable, struct.error, UnicodeDecodeError, ValueError, OverflowError, OSError):
            self._rejected()
            return None
        token = SignedToken(self._url_for(key, credential), expires_at, credential)
        if not self._local.usable(token, now, not_after):
            return None
        # Only what this process signed or opened itself ever goes into its own LRU.
        self._local.remember(key, token)
        return token

    def _bound_to(self, key: FileKey) -> bytes:
        bucket, file_name = key
        return length_prefixed(self._prefix, SIGNER, self._b2_key_id, bucket, file_name)

    def _rejected(self) -> None:
        if self._on_rejected is not None:
            self._on_rejected()
        now = self._monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            logger.warning("a download token in Redis did not open for its file; ignored")
