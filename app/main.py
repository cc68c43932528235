"""The application factory: `uvicorn --factory app.main:create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import metrics
from app.api_keys import ApiKeyCache
from app.auth import SECURITY_SCHEMES, JwksCache, JwtVerifier
from app.config import Settings, get_settings
from app.cors import DashboardCORSMiddleware
from app.db import Database, create_engine, database_url
from app.errors import install_error_handlers
from app.exports.router import add_export_route
from app.health import draining_on_sigterm
from app.health import router as health_router
from app.logs import configure_logging
from app.rate_limit import RateLimiter
from app.request_context import RequestContextMiddleware
from app.state import AppState
from app.storage import DownloadSigner

logger = logging.getLogger("app.main")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Worker processes start fresh: give them the same log setup as the command.
    configure_logging(settings.log_level, settings.log_format)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings, database_url(settings))
        background: list[asyncio.Task[None]] = []
        jwks = None
        if settings.jwt_jwks_url:
            jwks = JwksCache(
                settings.jwt_jwks_url,
                settings.jwt_jwks_timeout_seconds,
                settings.jwt_jwks_refresh_seconds,
            )
            # Keys are in memory before the first request; a JWKS outage only logs.
            await jwks.try_refresh()
            background.append(asyncio.create_task(jwks.run(), name="jwks-refresh"))
        signer = DownloadSigner(settings) if settings.storage_configured else None
        if signer is not None:
            signer.start()
        else:
            logger.warning("B2 is not configured: completed exports will answer 503")
        db = Database(engine, settings)
        app.state.orbit = state = AppState(
            settings=settings,
            db=db,
            jwt_verifier=JwtVerifier(settings, jwks),
            signer=signer,
            api_key_cache=(
                ApiKeyCache(settings.api_key_cache_seconds, db)
                if settings.api_key_cache_seconds
                else None
            ),
            rate_limiter=(
                RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
                if settings.rate_limit_per_minute
                else None
            ),
        )
        # Everything built so far lives as long as the process: keep it out of the collector's
        # full passes, which otherwise walk it all and stall requests (the p99 of make bench).
        gc.freeze()
        if state.api_key_cache is not None:
            background.append(asyncio.create_task(state.api_key_cache.run(), name="key-recheck"))
        if settings.metrics_enabled:
            background.append(asyncio.create_task(metrics.sample_forever(state), name="metrics"))
        try:
            with draining_on_sigterm(state):
                yield
        finally:
            if settings.metrics_enabled:
                metrics.worker_exiting()
            for task in background:
                task.cancel()
            if signer is not None:
                signer.close()
            await db.close()

    app = FastAPI(
        title="Orbit API: stored exports",
        version="1.0.0",
        description="Get a stored audience export with a fresh signed Backblaze B2 download URL.",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hook looks up providers on every request; metrics are ours.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if settings.cors_allow_origins:
        app.add_middleware(DashboardCORSMiddleware, origins=settings.cors_allow_origins)
    # Added last, so outermost: every response, CORS rejections included, gets its request id.
    app.add_middleware(
        RequestContextMiddleware,
        observe=metrics.observe_request if settings.metrics_enabled else None,
    )
    install_error_handlers(app)
    add_export_route(app)
    app.include_router(health_router)
    if settings.metrics_enabled:
        app.include_router(metrics.router)
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        app.openapi_schema = schema
    return app.openapi_schema
