"""Download URLs through B2's S3-compatible API: a SigV4 presigned GET for exactly one object,
computed locally by botocore's presigner (no network call, no B2 API call, no breaker).

Same rules as the native signer: lifetime EXPORT_URL_TTL_SECONDS, never past the export's
`expiresAt` nor S3's 7-day maximum; `response-content-disposition` names the file (RFC 6266);
the object key is percent-encoded in the path by botocore, so `?`, `#`, `%`, spaces and
non-ASCII characters are part of the name. A URL is reused per file while it has at least
EXPORT_URL_MIN_REMAINING_SECONDS left (EXPORT_URL_CACHE_SIZE=0: a new one every time);
docs/performance.md has what each costs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from app.core.clock import utc_now
from app.core.errors import StorageError
from app.core.settings import Settings
from app.storage.signer import (
    NOT_ONE_FILE,
    SignedDownload,
    clamped_ttl,
    content_disposition,
    names_one_file,
    signed_download,
)
from app.storage.token_cache import InMemoryTokenCache, SignedToken

# SigV4 query signatures are valid for at most 7 days.
MAX_S3_URL_SECONDS = 7 * 24 * 3600


def s3_client(settings: Settings) -> Any:
    """botocore's S3 client for presigning (imported here: only the s3 signer pays for it)."""
    import botocore.session
    from botocore.config import Config

    key_id, secret = settings.s3_credentials
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        region_name=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(
            signature_version="s3v4", s3={"addressing_style": settings.s3_addressing_style}
        ),
    )


class S3Signer:
    def __init__(
        self,
        settings: Settings,
        cache: InMemoryTokenCache,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._client = s3_client(settings)
        self._ttl = min(settings.export_url_ttl_seconds, MAX_S3_URL_SECONDS)
        self._cache = cache
        self._clock = clock

    async def sign(
        self, bucket_name: str, file_name: str, not_after: datetime | None
    ) -> SignedDownload:
        if not names_one_file(file_name):
            raise StorageError(NOT_ONE_FILE)
        key = (bucket_name, file_name)
        # Read before signing: botocore stamps the URL with its own (later) time, so the
        # expiry reported is never later than the real one.
        now = self._clock()
        token = await self._cache.get(key, now, not_after)
        reused = token is not None
        if token is None:
            ttl = clamped_ttl(self._ttl, now, not_after)
            url = self.presign(bucket_name, file_name, ttl)
            token = SignedToken(url, now + timedelta(seconds=ttl))
            await self._cache.put(key, token)
        return signed_download(token, now, reused)

    def presign(self, bucket_name: str, file_name: str, ttl: int) -> str:
        """A presigned GET of exactly `file_name`, valid `ttl` seconds from now."""
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": bucket_name,
                "Key": file_name,
                "ResponseContentDisposition": content_disposition(file_name),
            },
            ExpiresIn=ttl,
        )
        return url
