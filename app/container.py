"""The composition root: builds every long-lived object from the settings, hands each what it
needs, and runs their background tasks for as long as the app lives.

Nothing else constructs components or reads another component's internals; the routes receive
the few objects they use through `app.state` (set in `app.main`), and metrics learn of requests,
B2 calls, the pool and the breaker through the callbacks wired here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from app.api.health import Readiness
from app.api.metrics_endpoint import MetricsAccess
from app.auth.api_keys import (
    KEY_CHANGES_CHANNEL,
    ApiKeyResolver,
    CachedApiKeys,
    DatabaseApiKeys,
)
from app.auth.dependencies import Authenticator
from app.auth.jwt_verifier import JwksCache, JwtVerifier
from app.auth.rate_limit import InMemoryRateLimiter, RateLimiter
from app.auth.shared_rate_limit import RedisRateLimiter, redis_client
from app.core import metrics
from app.core.settings import Settings
from app.db.database import Database
from app.db.engine import create_engine, database_url
from app.db.notifications import listen_forever
from app.exports.router import ExportBackends
from app.storage.b2_client import B2Client
from app.storage.signer import DownloadSigner
from app.storage.token_cache import InMemoryTokenCache

logger = logging.getLogger("app.main")

READY_DB_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Components:
    authenticator: Authenticator
    export_backends: ExportBackends
    readiness: Readiness
    metrics_access: MetricsAccess | None


@contextlib.asynccontextmanager
async def open_components(settings: Settings) -> AsyncIterator[Components]:
    # Started once everything is built, cancelled at shutdown.
    background: list[Callable[[], Coroutine[Any, Any, None]]] = []
    url = database_url(settings)
    db = Database(create_engine(settings, url), settings)

    jwks = None
    if settings.jwt_jwks_url:
        jwks = JwksCache(
            settings.jwt_jwks_url,
            settings.jwt_jwks_timeout_seconds,
            settings.jwt_jwks_refresh_seconds,
        )
        # Keys are in memory before the first request; a JWKS outage only logs.
        await jwks.try_refresh()
        background.append(jwks.run)

    api_keys: ApiKeyResolver
    if settings.api_key_cache_seconds:
        cached = api_keys = CachedApiKeys(settings.api_key_cache_seconds, db)
        # Revocations reach every replica within a second; the periodic recheck stays as the
        # safety net for a lost listening connection.
        listen_url = settings.database_listen_url
        background.append(
            partial(
                listen_forever,
                listen_url.get_secret_value() if listen_url is not None else url,
                KEY_CHANGES_CHANNEL,
                cached.forget,
                cached.forget_all,
            )
        )
    else:
        api_keys = DatabaseApiKeys(db)
    background.append(api_keys.run)
    rate_limiter: RateLimiter | None = None
    shared_limiter = None
    if settings.rate_limit_per_minute:
        per_minute, burst = settings.rate_limit_per_minute, settings.rate_limit_burst
        local = rate_limiter = InMemoryRateLimiter(per_minute, burst)
        if settings.redis_url is not None:
            timeout = settings.redis_timeout_seconds
            rate_limiter = shared_limiter = RedisRateLimiter(
                redis_client(settings.redis_url.get_secret_value(), timeout),
                per_minute,
                burst,
                fallback=local,
                timeout=timeout,
                on_fallback=(
                    metrics.observe_rate_limit_fallback if settings.metrics_enabled else None
                ),
            )
    authenticator = Authenticator(JwtVerifier(settings, jwks), api_keys, rate_limiter)

    observe_b2 = metrics.observe_b2_call if settings.metrics_enabled else None
    b2 = B2Client(settings, observe_call=observe_b2) if settings.storage_configured else None
    token_cache = InMemoryTokenCache.from_settings(settings)
    signer = None
    if b2 is not None:
        b2.start()
        signer = DownloadSigner(b2, token_cache, settings.export_url_ttl_seconds)
    else:
        logger.warning("B2 is not configured: completed exports will answer 503")

    metrics_access = None
    if settings.metrics_enabled:
        sampler = metrics.WorkerSampler(
            pool_size=db.pool_size,
            connections_in_use=lambda: db.in_use,
            breaker_state=lambda: b2.breaker.state if b2 is not None else None,
            token_cache=token_cache.counts if b2 is not None else None,
        )
        background.append(sampler.run)
        token = settings.metrics_token
        metrics_access = MetricsAccess(
            sampler, token.get_secret_value().encode() if token is not None else None
        )

    components = Components(
        authenticator=authenticator,
        export_backends=ExportBackends(database=db, signer=signer),
        readiness=Readiness(
            ping_database=lambda: db.ping(READY_DB_TIMEOUT_SECONDS),
            storage_configured=signer is not None,
        ),
        metrics_access=metrics_access,
    )
    tasks = [asyncio.create_task(job()) for job in background]
    try:
        yield components
    finally:
        if settings.metrics_enabled:
            metrics.worker_exiting()
        for task in tasks:
            task.cancel()
        if b2 is not None:
            b2.close()
        if shared_limiter is not None:
            await shared_limiter.close()
        await db.close()
