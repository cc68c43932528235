"""Download URLs minted earlier, reused per file while they have enough lifetime left.

The signer sees only the `TokenCache` interface; the composition root picks the implementation.
`InMemoryTokenCache` is one worker's LRU; a shared (Redis-backed) cache plugs in behind the same
interface so that a fleet asks B2 once per file per token lifetime.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from app.core.metrics import LookupCounts
from app.core.settings import Settings

# (bucket name, file name)
FileKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class SignedToken:
    url: str
    expires_at: datetime
    # What the URL carries that makes it signed (a B2 download token), for a shared cache that
    # keeps only that and rebuilds the URL; empty where nothing is shared (the s3 signer).
    credential: str = ""


class TokenCache(Protocol):
    counts: LookupCounts

    async def get(
        self, key: FileKey, now: datetime, not_after: datetime | None
    ) -> SignedToken | None:
        """A cached URL for `key` with at least the minimum lifetime left at `now` and expiring
        no later than `not_after`, or None."""

    async def put(self, key: FileKey, token: SignedToken) -> None: ...

    def rotate(self, b2_key_id: str) -> None:
        """Tokens minted with another B2 key are not handed out again."""

    async def shared_mint(
        self,
        key: FileKey,
        now: datetime,
        not_after: datetime | None,
        mint: Callable[[], Awaitable[SignedToken]],
    ) -> SignedToken:
        """`mint()`'s token, or, where the cache is shared, one another process minted."""


class InMemoryTokenCache:
    def __init__(self, max_size: int, min_remaining_seconds: float) -> None:
        self._max_size = max_size
        self._min_remaining = min_remaining_seconds
        self._tokens: OrderedDict[FileKey, SignedToken] = OrderedDict()
        self.counts = LookupCounts()

    @classmethod
    def from_settings(cls, settings: Settings) -> InMemoryTokenCache:
        """EXPORT_URL_CACHE_SIZE files; a token is reused while it has at least
        EXPORT_URL_MIN_REMAINING_SECONDS left (default: a sixth of EXPORT_URL_TTL_SECONDS)."""
        min_remaining = settings.export_url_min_remaining_seconds
        if min_remaining is None:
            min_remaining = settings.export_url_ttl_seconds // 6
        return cls(settings.export_url_cache_size, min_remaining)

    def __len__(self) -> int:
        return len(self._tokens)

    def clear(self) -> None:
        """Forget every URL (a key rotated: none signed with the old one is handed out again)."""
        self._tokens.clear()

    async def get(
        self, key: FileKey, now: datetime, not_after: datetime | None
    ) -> SignedToken | None:
        token = self._tokens.get(key)
        if token is not None and self.usable(token, now, not_after):
            self._tokens.move_to_end(key)
            self.counts.hits += 1
            return token
        self.counts.misses += 1
        return None

    def usable(self, token: SignedToken, now: datetime, not_after: datetime | None) -> bool:
        """Enough lifetime left at `now`, and no later than the export's own expiry."""
        fresh_enough = (token.expires_at - now).total_seconds() >= self._min_remaining
        return fresh_enough and (not_after is None or token.expires_at <= not_after)

    async def shared_mint(
        self,
        key: FileKey,
        now: datetime,
        not_after: datetime | None,
        mint: Callable[[], Awaitable[SignedToken]],
    ) -> SignedToken:
        return await mint()

    async def put(self, key: FileKey, token: SignedToken) -> None:
        self.remember(key, token)

    def rotate(self, b2_key_id: str) -> None:
        self.clear()

    def remember(self, key: FileKey, token: SignedToken) -> None:
        if self._max_size == 0:
            return
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        if len(self._tokens) > self._max_size:
            self._tokens.popitem(last=False)
