"""Signed download URLs for exports stored in Backblaze B2.

A URL is the file's download URL with a B2 download authorization in its query. Tokens are
reused per file while they have enough lifetime left (`TokenCache`), and concurrent misses for
one file share a single B2 call, so B2 sees one call per file per token lifetime.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol
from urllib.parse import quote, urlencode

from app.core.clock import Clock, utc_now
from app.core.errors import StorageError
from app.core.settings import BUCKET_NAME
from app.storage.b2_client import B2Client
from app.storage.token_cache import FileKey, SignedToken, TokenCache

NOT_ONE_FILE = "This export's file name does not name one file; it cannot be signed."
NOT_OUR_BUCKET = "This export's bucket is not one this service signs for; it cannot be signed."
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


def names_one_file(file_name: str) -> bool:
    """False for names a download token would open more than one file with, or a folder:
    empty, ending in `/`, or with a `.` or `..` segment (the table refuses them too; rows
    written before migration 0004 may still hold one)."""
    return bool(file_name) and not file_name.endswith("/") and not _DOT_SEGMENT.search(file_name)


def check_signable(bucket_name: str, file_name: str, allowed: frozenset[str] | None) -> None:
    """StorageError (502, no URL) for a row this service must not sign: a file name that opens
    more than one file, a bucket name outside B2's rules or outside ALLOWED_BUCKETS."""
    if not names_one_file(file_name):
        raise StorageError(NOT_ONE_FILE)
    if not BUCKET_NAME.fullmatch(bucket_name) or (
        allowed is not None and bucket_name not in allowed
    ):
        raise StorageError(NOT_OUR_BUCKET)


def content_disposition(file_name: str) -> str:
    """`attachment` named after the file's last path segment (RFC 6266, with a UTF-8 form)."""
    base = file_name.rsplit("/", 1)[-1] or "export.csv"
    fallback = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in base)
    value = f'attachment; filename="{fallback}"'
    if fallback != base:
        value += f"; filename*=UTF-8''{quote(base, safe='')}"
    return value


class NoTimeLeft(Exception):
    """Less than a second is left before the export (or the reused URL) expires: no URL can be
    handed out for it."""


@dataclass(frozen=True, slots=True)
class SignedDownload:
    url: str
    expires_at: datetime
    ttl_seconds: int
    # True when a URL made earlier was reused, False when it was made for this request.
    reused: bool = False


def clamped_ttl(ttl: int, now: datetime, not_after: datetime | None) -> int:
    """`ttl`, shortened so the URL never outlives `not_after`; NoTimeLeft when under 1 s."""
    if not_after is not None:
        ttl = min(ttl, math.floor((not_after - now).total_seconds()))
    if ttl < 1:
        raise NoTimeLeft
    return ttl


def signed_download(token: SignedToken, now: datetime, reused: bool) -> SignedDownload:
    """What the route returns for `token` at `now`: its true remaining lifetime (NoTimeLeft
    when under 1 s)."""
    remaining = math.floor((token.expires_at - now).total_seconds())
    if remaining < 1:
        raise NoTimeLeft
    return SignedDownload(
        url=token.url, expires_at=token.expires_at, ttl_seconds=remaining, reused=reused
    )


class UrlSigner(Protocol):
    """What the route asks for a download URL: `DownloadSigner` (B2's native API) or
    `S3Signer` (B2's S3-compatible API), chosen by STORAGE_SIGNER."""

    async def sign(
        self, bucket_name: str, file_name: str, not_after: datetime | None
    ) -> SignedDownload: ...


class DownloadSigner:
    def __init__(
        self,
        b2: B2Client,
        cache: TokenCache,
        ttl_seconds: int,
        clock: Clock = utc_now,
        *,
        allowed_buckets: frozenset[str] | None = None,
    ) -> None:
        self._b2 = b2
        self._allowed = allowed_buckets
        self._cache = cache
        self._ttl = ttl_seconds
        self._clock = clock
        self._pending: dict[FileKey, asyncio.Future[SignedToken]] = {}

    def rotate_tokens(self, b2_key_id: str) -> None:
        """The B2 key rotated: tokens it minted are not handed out again (one mint per file
        follows)."""
        self._cache.rotate(b2_key_id)

    async def sign(
        self, bucket_name: str, file_name: str, not_after: datetime | None
    ) -> SignedDownload:
        """A download URL for exactly `file_name`, valid for the configured TTL but never past
        `not_after`.

        A token minted earlier for the same file is reused while it has at least
        `EXPORT_URL_MIN_REMAINING_SECONDS` left, so B2 sees one call per file per token
        lifetime; concurrent misses for one file share a single call. The reported expiry is
        the token's own: for a fresh token, clock read *before* minting + TTL; for a reused one,
        its true remaining lifetime. Never later than the real expiry.
        """
        check_signable(bucket_name, file_name, self._allowed)
        key = (bucket_name, file_name)
        now = self._clock()
        token = await self._cache.get(key, now, not_after)
        reused = token is not None
        if token is None:
            token = await self._single_flight(key, file_name, bucket_name, now, not_after)
        return signed_download(token, now, reused)

    async def _single_flight(
        self,
        key: FileKey,
        file_name: str,
        bucket_name: str,
        now: datetime,
        not_after: datetime | None,
    ) -> SignedToken:
        pending = self._pending.get(key)
        if pending is not None:
            token = await asyncio.shield(pending)
            if not_after is None or token.expires_at <= not_after:
                return token
            # Minted for a longer-lived export than this one: never hand out a URL that
            # outlives the caller's own export.
            return await self._mint(key, file_name, bucket_name, now, not_after)
        future: asyncio.Future[SignedToken] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            token = await self._cache.shared_mint(
                key,
                now,
                not_after,
                partial(self._mint, key, file_name, bucket_name, now, not_after),
            )
            future.set_result(token)
            return token
        except BaseException as exc:
            future.set_exception(exc)
            # Waiters receive the same error; nobody else awaits it otherwise.
            future.exception()
            raise
        finally:
            del self._pending[key]

    async def _mint(
        self,
        key: FileKey,
        file_name: str,
        bucket_name: str,
        now: datetime,
        not_after: datetime | None,
    ) -> SignedToken:
        ttl = clamped_ttl(self._ttl, now, not_after)
        disposition = content_disposition(file_name)
        value = await self._b2.download_authorization(bucket_name, file_name, ttl, disposition)
        token = SignedToken(download_url(self._b2, key, value), now + timedelta(seconds=ttl), value)
        await self._cache.put(key, token)
        return token


def download_url(b2: B2Client, key: FileKey, credential: str) -> str:
    """The file's download URL carrying the download token `credential` and the disposition
    the token was issued with (B2 refuses a download whose disposition differs)."""
    bucket_name, file_name = key
    query = urlencode(
        {"Authorization": credential, "b2ContentDisposition": content_disposition(file_name)},
        quote_via=quote,
    )
    return f"{b2.download_url(bucket_name, file_name)}?{query}"
