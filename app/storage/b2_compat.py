"""Every use of b2sdk's private API, in one place, for the b2sdk line it was written against.

Why each is needed:
- `B2Http._translate_and_retry` (and the `_translate_errors` it calls): b2sdk tries a failing
  call up to 5 times, sleeping 1 s, 1.5 s, ... or whatever Retry-After says between tries, in
  the signing thread and past any deadline; ours tries twice with a short pause and never
  sleeps on a throttle.
- `B2Session._api_token_callback` and `authorize_automatically`: concurrent calls that meet an
  expired account token share one re-authorization instead of each renewing it.
- `B2Session._wrap_default_token` and `raw_api._post_json`: the public
  `Bucket.get_download_authorization` cannot pass `b2ContentDisposition`, which the download URL
  must carry; the call goes through b2sdk's own session (same HTTP path, retries and
  re-authorization).

`tests/storage/test_b2_compat.py` pins the installed b2sdk to `WRITTEN_FOR` and exercises each
hook, so an upgrade fails loudly there rather than subtly in production.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import b2sdk.version
from b2sdk.v2 import B2Api, B2Http, B2Session
from b2sdk.v2.exception import B2Error

# The b2sdk minor line these hooks were read from (also pinned in pyproject.toml).
WRITTEN_FOR = "2.13"
# b2sdk's default is 5 tries for API calls; more would only wait past the caller's deadline.
MAX_TRIES = 2
# Between the two; the HTTP adapter sends nothing once the caller's deadline has passed.
RETRY_PAUSE_SECONDS = 0.1


def installed_b2sdk_line() -> str:
    major, minor, *_ = b2sdk.version.VERSION.split(".")
    return f"{major}.{minor}"


class _BoundedB2Http(B2Http):  # type: ignore[misc]
    @classmethod
    def _translate_and_retry(
        cls, fcn: Callable[[], Any], try_count: int, post_params: dict[str, Any] | None = None
    ) -> Any:
        """b2sdk's retry loop without its sleeps: b2sdk sleeps 1 s and more between tries, and
        as long as a 429/503's Retry-After says (120 s in a real throttle), in the signing
        thread, past any deadline. Here a transient failure is tried once more after a short
        pause; a throttle is not retried at all but raised, so the circuit breaker honours
        its Retry-After instead of a sleeping thread."""
        tries = max(1, min(try_count, MAX_TRIES))
        for attempt in range(1, tries + 1):
            try:
                return cls._translate_errors(fcn, post_params)
            except B2Error as exc:
                if (
                    attempt == tries
                    or not exc.should_retry_http()
                    or exc.retry_after_seconds is not None
                ):
                    raise
                time.sleep(RETRY_PAUSE_SECONDS)
        raise AssertionError("unreachable")


class _SharedReauthSession(B2Session):  # type: ignore[misc]
    B2HTTP_CLASS = staticmethod(_BoundedB2Http)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One lock for every authorization, proactive (B2Client) or on an expired token
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
        token since this call was sent, retry with the new one instead of renewing again."""
        with self.auth_lock:
            if self.account_info.get_account_auth_token() != getattr(self._sent, "token", None):
                return True
            renewed: bool = super().authorize_automatically()
            return renewed


class BoundedB2Api(B2Api):  # type: ignore[misc]
    """b2sdk's `B2Api` with capped retries and shared re-authorization."""

    SESSION_CLASS = staticmethod(_SharedReauthSession)

    @property
    def auth_lock(self) -> threading.Lock:
        lock: threading.Lock = self.session.auth_lock
        return lock


def get_download_authorization(
    api: BoundedB2Api, bucket_id: str, file_name: str, ttl: int, content_disposition: str
) -> str:
    """b2_get_download_authorization for names starting with `file_name`, with the
    `b2ContentDisposition` a download must then send."""
    session = api.session
    response = session._wrap_default_token(
        lambda api_url, account_auth_token: session.raw_api._post_json(
            api_url,
            "b2_get_download_authorization",
            account_auth_token,
            bucketId=bucket_id,
            fileNamePrefix=file_name,
            validDurationInSeconds=ttl,
            b2ContentDisposition=content_disposition,
        )
    )
    token = response.get("authorizationToken") if isinstance(response, dict) else None
    if not isinstance(token, str) or not token:
        raise MalformedB2Answer("b2_get_download_authorization answered without a token")
    return token


class MalformedB2Answer(Exception):
    """B2 answered 200 with JSON that does not say what the API promises."""
