"""A signer built as the composition root builds it, for tests that drive it directly."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from app.core.clock import Clock, utc_now
from app.core.settings import Settings
from app.storage.b2_client import B2Client
from app.storage.signer import DownloadSigner
from app.storage.token_cache import InMemoryTokenCache


@contextlib.contextmanager
def make_signer(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[tuple[DownloadSigner, InMemoryTokenCache]]:
    b2 = B2Client(settings, monotonic=monotonic)
    cache = InMemoryTokenCache.from_settings(settings)
    try:
        yield DownloadSigner(b2, cache, settings.export_url_ttl_seconds, clock=clock), cache
    finally:
        b2.close()
