"""Download URLs through B2's S3-compatible API: a SigV4 presigned GET for exactly one object,
computed locally (no network call, no B2 API call, no breaker) by the AWS Common Runtime's
signer (`awscrt.auth.aws_sign_request`, the C implementation botocore itself uses with its `crt`
extra): 36-85 µs a URL here where botocore's pure-Python presigner takes 230-380
(docs/performance.md).

Same rules as the native signer: lifetime EXPORT_URL_TTL_SECONDS, never past the export's
`expiresAt` nor S3's 7-day maximum; `response-content-disposition` names the file (RFC 6266);
the object key is percent-encoded in the path as S3 canonicalizes it (every byte but the
unreserved ones and `/`), so `?`, `#`, `%`, spaces and non-ASCII characters are part of the
name. A URL is reused per file while it has at least EXPORT_URL_MIN_REMAINING_SECONDS left
(EXPORT_URL_CACHE_SIZE=0: a new one every time).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import quote, urlsplit

from app.core.clock import Clock, utc_now
from app.core.errors import StorageError
from app.core.settings import BUCKET_NAME, Settings, allowed_buckets
from app.storage.signer import (
    NOT_OUR_BUCKET,
    SignedDownload,
    check_signable,
    clamped_ttl,
    content_disposition,
    signed_download,
)
from app.storage.token_cache import InMemoryTokenCache, SignedToken

# SigV4 query signatures are valid for at most 7 days.
MAX_S3_URL_SECONDS = 7 * 24 * 3600


class _Endpoint:
    """Where S3_ENDPOINT_URL and S3_ADDRESSING_STYLE put a bucket's objects."""

    def __init__(self, settings: Settings) -> None:
        assert settings.s3_endpoint_url is not None  # Settings refuses s3 without one
        url = urlsplit(settings.s3_endpoint_url)
        self.scheme, self.netloc = url.scheme, url.netloc
        self.base_path = url.path.rstrip("/")
        self.virtual = settings.s3_addressing_style == "virtual"

    def host_and_path(self, bucket_name: str, file_name: str) -> tuple[str, str]:
        if not BUCKET_NAME.fullmatch(bucket_name):
            # A virtual host is `<bucket>.<endpoint host>`: only B2's bucket names go there.
            raise StorageError(NOT_OUR_BUCKET)
        key = quote(file_name, safe="/~")
        if self.virtual:
            return f"{bucket_name}.{self.netloc}", f"{self.base_path}/{key}"
        return self.netloc, f"{self.base_path}/{quote(bucket_name, safe='')}/{key}"


class S3Signer:
    def __init__(
        self,
        settings: Settings,
        cache: InMemoryTokenCache,
        *,
        clock: Clock = utc_now,
    ) -> None:
        # Imported here: only the s3 signer loads the runtime (0.07 s).
        from awscrt import auth, http

        self._auth, self._http = auth, http
        self._credentials = self._credentials_of(settings)
        self._region = settings.s3_region
        self._endpoint = _Endpoint(settings)
        self._ttl = min(settings.export_url_ttl_seconds, MAX_S3_URL_SECONDS)
        self._cache = cache
        self._clock = clock
        self._allowed = allowed_buckets(settings)

    def _credentials_of(self, settings: Settings) -> object:
        key_id, secret = settings.s3_credentials
        assert key_id and secret  # Settings refuses s3 without them
        return self._auth.AwsCredentialsProvider.new_static(key_id, secret)

    def rotate(self, settings: Settings) -> None:
        """A new key pair (a reload): URLs are signed with it from now on, and none signed with
        the old one is handed out again."""
        self._credentials = self._credentials_of(settings)
        self._cache.clear()

    async def sign(
        self, bucket_name: str, file_name: str, not_after: datetime | None
    ) -> SignedDownload:
        check_signable(bucket_name, file_name, self._allowed)
        key = (bucket_name, file_name)
        # Read before signing: the signer stamps the URL with its own (later) time, so the
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
        """A presigned GET of exactly `file_name`, valid `ttl` seconds from now (the clock's)."""
        auth, http = self._auth, self._http
        host, path = self._endpoint.host_and_path(bucket_name, file_name)
        disposition = quote(content_disposition(file_name), safe="")
        request = http.HttpRequest(
            "GET",
            f"{path}?response-content-disposition={disposition}",
            http.HttpHeaders([("host", host)]),
        )
        config = auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4,
            signature_type=auth.AwsSignatureType.HTTP_REQUEST_QUERY_PARAMS,
            credentials_provider=self._credentials,
            region=self._region,
            service="s3",
            # S3's rules: the path is signed as sent (encoded once, dot segments kept), and
            # the body of a GET is not part of the signature.
            use_double_uri_encode=False,
            should_normalize_uri_path=False,
            signed_body_value=auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
            expiration_in_seconds=ttl,
            # The signer's clock (the CRT would read its own): a test can sign at another time.
            date=self._clock(),
        )
        # Static credentials: the signing completes within the call.
        signed = auth.aws_sign_request(request, config).result()
        return f"{self._endpoint.scheme}://{host}{signed.path}"
