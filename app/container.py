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
from typing import TYPE_CHECKING, Any

from app.api.health import Readiness
from app.api.metrics_endpoint import MetricsAccess
from app.audit.log import AuditLog
from app.auth.api_keys import (
    KEY_CHANGES_CHANNEL,
    ApiKeyResolver,
    CachedApiKeys,
    DatabaseApiKeys,
)
from app.auth.dependencies import Authenticator
from app.auth.jwt_verifier import JwksCache, JwtVerifier
from app.auth.rate_limit import InMemoryRateLimiter, RateLimiter
from app.core import metrics
from app.core.sealing import Sealer
from app.core.settings import Settings, allowed_buckets, secrets_dir
from app.core.settings_reload import SettingsReloader
from app.core.shared_state import RedisGuard, key_prefix, redis_client, shared_state_secret
from app.db.connection import database_url, keepalive
from app.db.database import Database
from app.db.notifications import NOTIFY_SQL, Listener
from app.exports.router import ExportBackends
from app.storage.b2_client import B2Client
from app.storage.signer import DownloadSigner, UrlSigner, download_url
from app.storage.token_cache import InMemoryTokenCache, TokenCache

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app.storage.shared_token_cache import RedisTokenCache

logger = logging.getLogger("app.main")

READY_DB_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Components:
    authenticator: Authenticator
    export_backends: ExportBackends
    readiness: Readiness
    metrics_access: MetricsAccess | None
    # Secrets and limits read again on SIGHUP and on a change in SECRETS_DIR; None when the
    # settings were given whole (an app built in a test, say).
    reloader: SettingsReloader | None


@contextlib.asynccontextmanager
async def open_components(
    settings: Settings, reload_from: Callable[[], Settings] | None = None
) -> AsyncIterator[Components]:
    # Started once everything is built, cancelled at shutdown.
    background: list[Callable[[], Coroutine[Any, Any, None]]] = []
    # Set once revocations are being heard: requests then start with nothing to forget.
    listening = asyncio.Event()
    url = database_url(settings)
    db = Database(settings, url)

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
    cached: CachedApiKeys | None = None
    if settings.api_key_cache_seconds:
        cached = api_keys = CachedApiKeys(
            settings.api_key_cache_seconds,
            db,
            on_ignored_notification=(
                metrics.observe_ignored_notification if settings.metrics_enabled else None
            ),
        )
        # Revocations reach every replica within a second; the periodic recheck stays as the
        # safety net for a lost listening connection.
        listen_url = settings.database_listen_url

        def listening_again() -> None:
            cached.forget_all()
            listening.set()

        listener = Listener(
            listen_url.get_secret_value() if listen_url is not None else url,
            KEY_CHANGES_CHANNEL,
            cached.forget,
            send_probe=lambda channel, nonce: db.execute(NOTIFY_SQL, channel, nonce),
            heartbeat_seconds=settings.listen_heartbeat_seconds,
            on_connected=listening_again,
            on_lost=cached.stopped_listening,
            on_listening=metrics.observe_listening if settings.metrics_enabled else None,
            keepalive=keepalive(settings),
            setting="DATABASE_LISTEN_URL" if listen_url is not None else "DATABASE_URL",
        )
        background.append(listener.run)
    else:
        api_keys = DatabaseApiKeys(db)
    background.append(api_keys.run)
    # One Redis client for the fleet's shared state, when there is a fleet.
    redis = limiter_redis = None
    prefix = key_prefix(settings, url)
    if settings.redis_url is not None:
        redis_url, timeout = settings.redis_url.get_secret_value(), settings.redis_timeout_seconds
        redis = redis_client(redis_url, timeout)
        # The rate limiter sends one batch at a time (app/auth/shared_rate_limit.py).
        limiter_redis = redis_client(redis_url, timeout, single_connection=True)

    def guard(component: str, client: Redis | None) -> RedisGuard:
        assert client is not None
        count = partial(metrics.observe_shared_state_fallback, component)
        return RedisGuard(
            client,
            component,
            timeout=settings.redis_timeout_seconds,
            on_fallback=count if settings.metrics_enabled else None,
        )

    def rate_limiter_for(settings: Settings) -> RateLimiter | None:
        if not settings.rate_limit_per_minute:
            return None
        per_minute, burst = settings.rate_limit_per_minute, settings.rate_limit_burst
        local = InMemoryRateLimiter(per_minute, burst)
        if limiter_redis is None:
            return local
        from app.auth.shared_rate_limit import RedisRateLimiter

        return RedisRateLimiter(
            guard("rate_limit", limiter_redis), per_minute, burst, local, prefix=prefix
        )

    verifier = JwtVerifier(
        settings,
        jwks,
        on_previous_secret=metrics.observe_previous_jwt_secret
        if settings.metrics_enabled
        else None,
    )
    authenticator = Authenticator(verifier, api_keys, rate_limiter_for(settings))

    observe_b2 = metrics.observe_b2_call if settings.metrics_enabled else None
    native = settings.storage_signer == "b2-native"
    b2 = (
        B2Client(settings, observe_call=observe_b2)
        if native and settings.storage_configured
        else None
    )
    local_tokens = InMemoryTokenCache.from_settings(settings)
    signer: UrlSigner | None = None
    shared_tokens: RedisTokenCache | None = None
    s3_signer = None
    if not native:
        # Local signing: no B2 call, nothing to share through Redis, no breaker.
        from app.storage.s3_signer import S3Signer

        signer = s3_signer = S3Signer(settings, local_tokens)
    elif b2 is not None:
        token_cache: TokenCache = local_tokens
        if redis is not None:
            from app.storage.shared_token_cache import SEALING_PURPOSE, RedisTokenCache

            rejected = partial(metrics.observe_shared_state_rejected, "download_tokens")
            token_cache = shared_tokens = RedisTokenCache(
                guard("download_tokens", redis),
                local_tokens,
                sealer=Sealer(shared_state_secret(settings), SEALING_PURPOSE),
                prefix=prefix,
                b2_key_id=b2.key_id,
                url_for=partial(download_url, b2),
                wait_seconds=settings.storage_timeout_seconds,
                on_rejected=rejected if settings.metrics_enabled else None,
            )
        b2.start()
        signer = DownloadSigner(
            b2,
            token_cache,
            settings.export_url_ttl_seconds,
            allowed_buckets=allowed_buckets(settings),
        )
    else:
        logger.warning("B2 is not configured: completed exports will answer 503")

    audit = None
    if settings.audit:
        audit = AuditLog(
            db,
            flush_seconds=settings.audit_flush_seconds,
            queue_max=settings.audit_queue_max,
            on_written=metrics.observe_audit_written if settings.metrics_enabled else None,
            on_dropped=metrics.observe_audit_dropped if settings.metrics_enabled else None,
        )
        background.append(audit.run)

    metrics_access = None
    if settings.metrics_enabled:
        sampler = metrics.WorkerSampler(
            pool_size=db.pool_size,
            connections_in_use=db.in_use,
            breaker_state=lambda: b2.breaker.state if b2 is not None else None,
            token_cache=local_tokens.counts if signer is not None else None,
            audit_queue=audit.__len__ if audit is not None else None,
        )
        background.append(sampler.run)
        token = settings.metrics_token
        metrics_access = MetricsAccess(
            sampler, token.get_secret_value().encode() if token is not None else None
        )

    def apply(new: Settings, changed: frozenset[str]) -> None:
        """A reload's new secrets and limits, each to the one component that uses them."""
        if changed & {"jwt_secret", "jwt_previous_secrets"}:
            verifier.rotate(new)
        if changed & {"b2_application_key_id", "b2_application_key"} and b2 is not None:
            b2.rotate(new)
            if isinstance(signer, DownloadSigner):
                signer.rotate_tokens(b2.key_id)
        if s3_signer is not None and changed & {
            "s3_access_key_id",
            "s3_secret_access_key",
            "b2_application_key_id",
            "b2_application_key",
        }:
            s3_signer.rotate(new)
        if "metrics_token" in changed and metrics_access is not None:
            token = new.metrics_token
            metrics_access.token = token.get_secret_value().encode() if token is not None else None
        if "shared_state_secret" in changed and shared_tokens is not None:
            shared_tokens.reseal(shared_state_secret(new))
        if changed & {"rate_limit_per_minute", "rate_limit_burst"}:
            limiter = authenticator.rate_limiter
            if limiter is not None and new.rate_limit_per_minute:
                limiter.configure(new.rate_limit_per_minute, new.rate_limit_burst)
            else:
                authenticator.rate_limiter = rate_limiter_for(new)

    reloader = None
    if reload_from is not None:
        reloader = SettingsReloader(
            settings,
            reload_from,
            apply,
            on_refused=metrics.observe_refused_reload if settings.metrics_enabled else None,
        )
        background.append(partial(reloader.watch, secrets_dir(), settings.settings_reload_seconds))

    components = Components(
        authenticator=authenticator,
        export_backends=ExportBackends(
            database=db, signer=signer, signer_name=settings.storage_signer, audit=audit
        ),
        readiness=Readiness(
            lambda: db.ping(READY_DB_TIMEOUT_SECONDS),
            storage_configured=signer is not None,
            grace=settings.readiness_dependency_grace_seconds,
            reached=lambda: db.reached,
        ),
        metrics_access=metrics_access,
        reloader=reloader,
    )
    await db.open()
    tasks = [asyncio.create_task(job()) for job in background]
    if cached is not None:
        # Bounded: with Postgres down the service still starts (and is not ready).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listening.wait(), settings.db_deadline_seconds)
            await asyncio.wait_for(cached.loaded.wait(), settings.db_deadline_seconds)
    try:
        yield components
    finally:
        for task in tasks:
            task.cancel()
        if audit is not None:
            # The server has drained its requests: what they handed out is written now.
            await audit.close()
        if settings.metrics_enabled:
            metrics.worker_exiting()
        if b2 is not None:
            b2.close()
        for client in (redis, limiter_redis):
            if client is not None:
                await client.aclose()
        await db.close()
