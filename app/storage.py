"""Signed download URLs for exports stored in Backblaze B2, through b2sdk.

b2sdk is synchronous, so every call runs on a small bounded thread pool with a hard deadline;
the event loop never waits on B2 and a slow B2 costs a request at most STORAGE_TIMEOUT_SECONDS.
The account is authorized once per process (in the background at start) and re-authorized
under a lock well before its 24-hour token expires, so concurrent requests never stampede.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import quote, urlencode

import requests
from b2sdk.v2 import B2Api, B2Http, B2HttpApiConfig, B2Session, InMemoryAccountInfo, InMemoryCache
from b2sdk.v2.exception import B2Error, NonExistentBucket
from requests.adapters import HTTPAdapter

from app import metrics
from app.config import Settings
from app.errors import StorageUnavailable
from app.request_context import utc_now

logger = logging.getLogger("app.storage")


class _BoundedB2Http(B2Http):  # type: ignore[misc]
    """b2sdk tries a failing call up to 5 times (20 for data) with growing sleeps in between;
    past our deadline nobody waits for the answer, so one retry is all we allow."""

    MAX_TRIES = 2

    @classmethod
    def _translate_and_retry(
        cls, fcn: Callable[[], Any], try_count: int, post_params: dict[str, Any] | None = None
    ) -> Any:
        return super()._translate_and_retry(fcn, min(try_count, cls.MAX_TRIES), post_params)


class _BoundedB2Session(B2Session):  # type: ignore[misc]
    B2HTTP_CLASS = staticmethod(_BoundedB2Http)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One lock for every authorization, proactive (DownloadSigner) or on an expired token
        # (b2sdk), and the account token each thread last sent.
        self.auth_lock = threading.Lock()
        self._sent = threading.local()

    def _api_token_callback(self, raw_api_method: Any, *args: Any, **kwargs: Any) -> Any:
        # b2sdk's own callback, remembering which token this thread's call carries.
        api_url = self.account_info.get_api_url()
        token = self.account_info.get_account_auth_token()
        self._sent.token = token
        return raw_api_method(api_url, token, *args, **kwargs)

    def authorize_automatically(self) -> bool:
        """b2sdk calls this when B2 rejects an expired token. If another thread renewed the
        token since this call was sent, retry with the new one instead of renewing again, so
        concurrent failures share one re-authorization."""
        with self.auth_lock:
            if self.account_info.get_account_auth_token() != getattr(self._sent, "token", None):
                return True
            renewed: bool = super().authorize_automatically()
            return renewed


class _BoundedB2Api(B2Api):  # type: ignore[misc]
    SESSION_CLASS = staticmethod(_BoundedB2Session)


# The monotonic time by which the request waiting for this thread's B2 work gives up.
_caller_deadline = threading.local()


class _DeadlineAdapter(HTTPAdapter):
    """Caps b2sdk's per-request timeouts (about 48 s to connect, 128 s to read) to our deadline,
    and the time left to the waiting request's; once that has passed (say, when b2sdk is about
    to retry), nothing more is sent: nobody would read the answer."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        started = time.monotonic()
        limit = self._timeout
        deadline = getattr(_caller_deadline, "at", None)
        if deadline is not None:
            limit = min(limit, deadline - started)
            if limit <= 0:
                raise requests.exceptions.ConnectTimeout("the caller's deadline has passed")
        outcome = "error"
        try:
            response = super().send(
                request,
                stream=stream,
                timeout=(limit, limit),
                verify=verify,
                cert=cert,
                proxies=proxies,
            )
            outcome = f"{response.status_code // 100}xx"
            return response
        finally:
            metrics.observe_b2_call(request.url or "", outcome, time.monotonic() - started)


def _http_session(timeout: float) -> requests.Session:
    session = requests.Session()
    adapter = _DeadlineAdapter(timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def content_disposition(file_name: str) -> str:
    """`attachment` named after the file's last path segment (RFC 6266, with a UTF-8 form)."""
    base = file_name.rsplit("/", 1)[-1] or "export.csv"
    fallback = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in base)
    value = f'attachment; filename="{fallback}"'
    if fallback != base:
        value += f"; filename*=UTF-8''{quote(base, safe='')}"
    return value


class CircuitBreaker:
    """After `threshold` consecutive failures, B2 is not called for `cooldown` seconds: requests
    get 503 at once instead of each tying up a thread until its deadline. Then one trial call
    is let through; its success closes the breaker, its failure opens it again.

    Used from the event loop only, so it needs no lock.
    """

    def __init__(self, threshold: int, cooldown: float, monotonic: Callable[[], float]) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._monotonic = monotonic
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._monotonic() - self.opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial_running = False

    def record_failure(self) -> None:
        self.failures += 1
        if self._trial_running or self.failures >= self.threshold:
            self.opened_at = self._monotonic()
        self._trial_running = False


@dataclass(frozen=True, slots=True)
class _Token:
    url: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SignedDownload:
    url: str
    expires_at: datetime
    ttl_seconds: int
    # True when a cached token was reused, False when B2 was asked for this request.
    reused: bool = False


class DownloadSigner:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.b2_application_key_id and settings.b2_application_key
        self._key_id = settings.b2_application_key_id
        self._key = settings.b2_application_key
        self._realm = settings.b2_realm
        self._ttl = settings.export_url_ttl_seconds
        self._timeout = settings.storage_timeout_seconds
        self._reauthorize_after = settings.b2_reauthorize_after_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._api = _BoundedB2Api(
            InMemoryAccountInfo(),
            cache=InMemoryCache(),
            api_config=B2HttpApiConfig(
                http_session_factory=partial(_http_session, self._timeout),
                user_agent_append="orbit-exports",
                # Otherwise b2sdk replaces the session's adapters with its own, dropping the
                # deadline cap and the call metrics of _DeadlineAdapter. (It only affects how
                # file downloads are decoded; this service never downloads through b2sdk.)
                decode_content=True,
            ),
        )
        self.breaker = CircuitBreaker(
            settings.storage_breaker_threshold, settings.storage_breaker_cooldown_seconds, monotonic
        )
        self._executor = ThreadPoolExecutor(
            max_workers=settings.storage_max_threads, thread_name_prefix="b2"
        )
        self._cache_size = settings.export_url_cache_size
        self._min_remaining = (
            settings.export_url_min_remaining_seconds
            if settings.export_url_min_remaining_seconds is not None
            else self._ttl // 6
        )
        self._tokens: OrderedDict[tuple[str, str], _Token] = OrderedDict()
        self._pending: dict[tuple[str, str], asyncio.Future[_Token]] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self._authorized_at: float | None = None

    # --- runs on the B2 thread pool -------------------------------------------------------

    def _authorize(self, force: bool = False) -> None:
        with self._api.session.auth_lock:
            fresh = (
                self._authorized_at is not None
                and self._monotonic() - self._authorized_at < self._reauthorize_after
            )
            if fresh and not force:
                return
            self._api.authorize_account(self._realm, self._key_id, self._key.get_secret_value())
            self._authorized_at = self._monotonic()
            logger.info("authorized with B2")

    def _ensure_authorized(self) -> None:
        authorized_at = self._authorized_at
        if authorized_at is None or self._monotonic() - authorized_at >= self._reauthorize_after:
            self._authorize()

    def _mint(self, bucket_name: str, file_name: str, ttl: int, deadline: float) -> str:
        if time.monotonic() > deadline:
            # Queued behind slower calls past the caller's deadline: nobody waits for this now.
            raise TimeoutError
        _caller_deadline.at = deadline
        try:
            return self._mint_by(bucket_name, file_name, ttl)
        finally:
            _caller_deadline.at = None

    def _mint_by(self, bucket_name: str, file_name: str, ttl: int) -> str:
        self._ensure_authorized()
        bucket = self._api.get_bucket_by_name(bucket_name)
        session = self._api.session
        # The public Bucket.get_download_authorization cannot pass b2ContentDisposition, so the
        # call goes through b2sdk's session: same HTTP path, retries and re-authorization.
        response = session._wrap_default_token(
            lambda api_url, account_auth_token: session.raw_api._post_json(
                api_url,
                "b2_get_download_authorization",
                account_auth_token,
                bucketId=bucket.id_,
                fileNamePrefix=file_name,
                validDurationInSeconds=ttl,
                b2ContentDisposition=content_disposition(file_name),
            )
        )
        return str(response["authorizationToken"])

    # --- event loop side ------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.breaker.allow():
            raise StorageUnavailable()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self._timeout
        try:
            result = await asyncio.wait_for(
                loop.run_in_executor(self._executor, partial(fn, *args, deadline)), self._timeout
            )
        except NonExistentBucket:
            # A row naming a bucket B2 does not have: a data problem, not an outage.
            self.breaker.record_success()
            logger.warning("B2 has no bucket named in an export row")
            raise StorageUnavailable() from None
        except TimeoutError:
            self.breaker.record_failure()
            logger.warning("B2 call exceeded %.1fs deadline", self._timeout)
            raise StorageUnavailable() from None
        except (B2Error, requests.RequestException, OSError, ValueError, KeyError) as exc:
            self.breaker.record_failure()
            logger.warning("B2 call failed: %s", type(exc).__name__)
            raise StorageUnavailable() from None
        self.breaker.record_success()
        return result

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
        key = (bucket_name, file_name)
        now = self._clock()
        token = self._reusable(key, now, not_after)
        reused = token is not None
        if token is None:
            token = await self._single_flight(key, file_name, bucket_name, now, not_after)
        remaining = math.floor((token.expires_at - now).total_seconds())
        if remaining < 1:
            raise ValueError("no time left to sign a URL for")
        return SignedDownload(
            url=token.url, expires_at=token.expires_at, ttl_seconds=remaining, reused=reused
        )

    def _reusable(
        self, key: tuple[str, str], now: datetime, not_after: datetime | None
    ) -> _Token | None:
        token = self._tokens.get(key)
        if token is None:
            self.cache_misses += 1
            return None
        fresh_enough = (token.expires_at - now).total_seconds() >= self._min_remaining
        if fresh_enough and (not_after is None or token.expires_at <= not_after):
            self._tokens.move_to_end(key)
            self.cache_hits += 1
            return token
        self.cache_misses += 1
        return None

    async def _single_flight(
        self,
        key: tuple[str, str],
        file_name: str,
        bucket_name: str,
        now: datetime,
        not_after: datetime | None,
    ) -> _Token:
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Token] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            ttl = self._ttl
            if not_after is not None:
                ttl = min(ttl, math.floor((not_after - now).total_seconds()))
            if ttl < 1:
                raise ValueError("no time left to sign a URL for")
            value = await self._call(self._mint, bucket_name, file_name, ttl)
            base = self._api.get_download_url_for_file_name(bucket_name, file_name)
            query = urlencode(
                {"Authorization": value, "b2ContentDisposition": content_disposition(file_name)},
                quote_via=quote,
            )
            token = _Token(f"{base}?{query}", now + timedelta(seconds=ttl))
            self._tokens[key] = token
            if len(self._tokens) > self._cache_size:
                self._tokens.popitem(last=False)
            future.set_result(token)
            return token
        except BaseException as exc:
            future.set_exception(exc)
            # Waiters receive the same error; nobody else awaits it otherwise.
            future.exception()
            raise
        finally:
            del self._pending[key]

    def start(self) -> None:
        """Authorize in the background so the first request does not pay for it."""
        future = self._executor.submit(self._authorize)
        future.add_done_callback(_log_background_failure)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _log_background_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        logger.warning(
            "B2 authorization at start failed (%s); will retry on demand", type(exc).__name__
        )
