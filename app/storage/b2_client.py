"""The B2 side of signing: b2sdk calls on a small bounded thread pool, each with a hard deadline.

b2sdk is synchronous, so every call runs on the pool and the event loop never waits on B2; a
slow B2 costs a request at most STORAGE_TIMEOUT_SECONDS. The account is authorized once per
process (in the background at start) and again under a lock well before its 24-hour token
expires, so concurrent requests never stampede. Failures feed a circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import requests
from b2sdk.v2 import B2HttpApiConfig, InMemoryAccountInfo, InMemoryCache
from b2sdk.v2.exception import B2Error
from pydantic import SecretStr
from requests.adapters import HTTPAdapter

from app.core.errors import StorageError, StorageUnavailable
from app.core.settings import Settings
from app.storage.b2_compat import BoundedB2Api, get_download_authorization
from app.storage.breaker import CircuitBreaker

logger = logging.getLogger("app.storage")

# (request URL, outcome "2xx"/"4xx"/"5xx"/"error", seconds): how metrics learn of each B2 call.
B2CallObserver = Callable[[str, str, float], None]


class AccountUnusable(Exception):
    """Authorizing the B2 account failed: an outage for every file, never one file's fault."""


# The monotonic time by which the request waiting for this thread's B2 work gives up.
_caller_deadline = threading.local()


class _DeadlineAdapter(HTTPAdapter):
    """Caps b2sdk's per-request timeouts (about 48 s to connect, 128 s to read) to our deadline,
    and the time left to the waiting request's; once that has passed (say, when b2sdk is about
    to retry), nothing more is sent: nobody would read the answer."""

    def __init__(self, timeout: float, observe: B2CallObserver | None) -> None:
        super().__init__()
        self._timeout = timeout
        self._observe = observe

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
            if self._observe is not None:
                self._observe(request.url or "", outcome, time.monotonic() - started)


def _http_session(timeout: float, observe: B2CallObserver | None) -> requests.Session:
    session = requests.Session()
    adapter = _DeadlineAdapter(timeout, observe)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _Account:
    """One application key's b2sdk API (its account info, cache and session): replaced whole
    when the key rotates, so a call in progress finishes with the key it started with."""

    def __init__(self, api: BoundedB2Api, key_id: str, key: SecretStr) -> None:
        self.api = api
        self.key_id = key_id
        self.key = key
        self.authorized_at: float | None = None


class B2Client:
    def __init__(
        self,
        settings: Settings,
        *,
        observe_call: B2CallObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._realm = settings.b2_realm
        self._timeout = settings.storage_timeout_seconds
        self._reauthorize_after = settings.b2_reauthorize_after_seconds
        self._monotonic = monotonic
        self._observe_call = observe_call
        self._account = self._new_account(settings)
        # The last account that completed an authorization: it knows the download host (the
        # same for every key of the account) while a rotated-in key is being authorized.
        self._authorized: _Account | None = None
        self.breaker = CircuitBreaker(
            settings.storage_breaker_threshold, settings.storage_breaker_cooldown_seconds, monotonic
        )
        self._executor = ThreadPoolExecutor(
            max_workers=settings.storage_max_threads, thread_name_prefix="b2"
        )

    def _new_account(self, settings: Settings) -> _Account:
        assert settings.b2_application_key_id and settings.b2_application_key
        api = BoundedB2Api(
            InMemoryAccountInfo(),
            cache=InMemoryCache(),
            api_config=B2HttpApiConfig(
                http_session_factory=partial(_http_session, self._timeout, self._observe_call),
                user_agent_append="orbit-exports",
                # Otherwise b2sdk replaces the session's adapters with its own, dropping the
                # deadline cap and the call metrics of _DeadlineAdapter. (It only affects how
                # file downloads are decoded; this service never downloads through b2sdk.)
                decode_content=True,
            ),
        )
        return _Account(api, settings.b2_application_key_id, settings.b2_application_key)

    @property
    def key_id(self) -> str:
        """The application key in use (not a secret: B2 shows it in every listing)."""
        return self._account.key_id

    def rotate(self, settings: Settings) -> None:
        """A new key pair (a reload): calls from now on authorize with it (a new b2sdk account
        info); calls in progress finish with the old one. Authorized in the background."""
        self._account = self._new_account(settings)
        self.start()

    # --- runs on the B2 thread pool -------------------------------------------------------

    def _authorize(self, account: _Account, force: bool = False) -> None:
        with account.api.auth_lock:
            fresh = (
                account.authorized_at is not None
                and self._monotonic() - account.authorized_at < self._reauthorize_after
            )
            if fresh and not force:
                return
            account.api.authorize_account(
                self._realm, account.key_id, account.key.get_secret_value()
            )
            account.authorized_at = self._monotonic()
            self._authorized = account
            logger.info("authorized with B2")

    def _ensure_authorized(self, account: _Account) -> None:
        authorized_at = account.authorized_at
        if authorized_at is None or self._monotonic() - authorized_at >= self._reauthorize_after:
            self._authorize(account)

    def _download_authorization(
        self, bucket_name: str, file_name: str, ttl: int, disposition: str, deadline: float
    ) -> str:
        if time.monotonic() > deadline:
            # Queued behind slower calls past the caller's deadline: nobody waits for this now.
            raise TimeoutError
        _caller_deadline.at = deadline
        account = self._account
        try:
            try:
                self._ensure_authorized(account)
            except B2Error as exc:
                # The account itself is unusable (wrong key, B2 down): every file is affected.
                raise AccountUnusable(type(exc).__name__) from exc
            bucket = account.api.get_bucket_by_name(bucket_name)
            return get_download_authorization(account.api, bucket.id_, file_name, ttl, disposition)
        finally:
            _caller_deadline.at = None

    # --- event loop side ------------------------------------------------------------------

    async def download_authorization(
        self, bucket_name: str, file_name: str, ttl: int, disposition: str
    ) -> str:
        """A download token for names starting with `file_name` in `bucket_name`, valid for
        `ttl` seconds. StorageUnavailable when B2 cannot give one in time (an availability
        failure, counted by the breaker); StorageError when B2 refuses this file or bucket
        (bad name, no such bucket, no access to it), which says nothing about other tenants'
        files and leaves the breaker alone."""
        if not self.breaker.allow():
            raise StorageUnavailable(self.breaker.retry_after())
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self._timeout
        call = partial(
            self._download_authorization, bucket_name, file_name, ttl, disposition, deadline
        )
        # In the request's context, as asyncio.to_thread would: the B2 call's span (tracing on)
        # belongs to the request's trace.
        context = contextvars.copy_context()
        try:
            token = await asyncio.wait_for(
                loop.run_in_executor(self._executor, context.run, call), self._timeout
            )
        except B2Error as exc:
            if exc.should_retry_http():
                # b2sdk's own judgement of a transient failure: 5xx, 429, connection errors.
                self.breaker.record_failure(retry_after=exc.retry_after_seconds)
                logger.warning("B2 call failed: %s", type(exc).__name__)
                raise StorageUnavailable(self.breaker.retry_after()) from None
            self.breaker.record_neutral()
            logger.warning("B2 refused to sign a file: %s", type(exc).__name__)
            raise StorageError() from None
        except TimeoutError:
            self.breaker.record_failure()
            logger.warning("B2 call exceeded %.1fs deadline", self._timeout)
            raise StorageUnavailable(self.breaker.retry_after()) from None
        except asyncio.CancelledError:
            # The caller went away: a half-open trial must not stay "running" forever.
            self.breaker.record_neutral()
            raise
        except Exception as exc:
            # Connection errors, and anything b2sdk raises on an answer it cannot read
            # (malformed JSON has surfaced as TypeError and AttributeError): B2 misbehaving.
            self.breaker.record_failure()
            logger.warning("B2 call failed: %s", type(exc).__name__)
            raise StorageUnavailable(self.breaker.retry_after()) from None
        self.breaker.record_success()
        return token

    def download_url(self, bucket_name: str, file_name: str) -> str:
        """The file's download URL by name, without authorization (known once authorized)."""
        account = self._authorized or self._account
        url: str = account.api.get_download_url_for_file_name(bucket_name, file_name)
        return url

    def start(self) -> None:
        """Authorize in the background so the first request does not pay for it."""
        future = self._executor.submit(self._authorize, self._account)
        future.add_done_callback(_log_background_failure)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _log_background_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        logger.warning(
            "B2 authorization at start failed (%s); will retry on demand", type(exc).__name__
        )
