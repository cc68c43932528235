"""The FastAPI application.

`app` serves as `uvicorn app.main:app` or `fastapi run app/main.py`; `create_app(settings)` builds
another one (the tests do, with their own settings). The lifespan opens the components
(`app.container`, the composition root) and gives the routes the few objects they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.middleware import Middleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.api import health, metrics_endpoint
from app.api.cors import DashboardCORSMiddleware
from app.api.errors import install_error_handlers
from app.api.request_context import RequestContextMiddleware
from app.api.request_limits import RequestLimitsMiddleware
from app.api.unexpected_errors import UnexpectedErrorMiddleware
from app.auth.dependencies import SECURITY_SCHEMES
from app.auth.middleware import AuthenticationMiddleware
from app.container import open_components
from app.core import metrics
from app.core.logs import configure_logging
from app.core.process import stop_with_supervisor
from app.core.settings import (
    ConfigurationError,
    Settings,
    describe_invalid_settings,
    get_settings,
    report_configuration_error,
)
from app.core.settings_reload import SettingsReloader, load_settings
from app.core.tracing import Tracing, untraced
from app.exports import router as exports

if TYPE_CHECKING:
    # FastAPI's own OpenTelemetry support, from 0.16x (older ones ignore the argument).
    from fastapi.telemetry import TelemetryConfig


def create_app(
    settings: Settings | None = None, *, reload_from: Callable[[], Settings] | None = None
) -> FastAPI:
    """The app for `settings`; ConfigurationError when they cannot serve. With `reload_from`,
    secrets and limits are read again from it on SIGHUP and when SECRETS_DIR changes."""
    settings = settings or get_settings()
    settings.check_serving()
    # Worker processes start fresh: give them the same log setup as the command.
    configure_logging(settings.log_level, settings.log_format)
    tracing = Tracing(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop_with_supervisor()
        try:
            async with open_components(settings, reload_from) as components:
                app.state.authenticator = components.authenticator
                app.state.export_backends = components.export_backends
                app.state.readiness = components.readiness
                app.state.metrics_access = components.metrics_access
                # Everything built so far lives as long as the process: keep it out of the
                # collector's full passes, which otherwise walk it all and stall requests (the
                # p99 of make bench).
                gc.freeze()
                gc.set_threshold(settings.gc_gen0_threshold, *gc.get_threshold()[1:])
                components.readiness.started = True
                with (
                    health.draining_on_sigterm(
                        components.readiness, settings.shutdown_delay_seconds
                    ),
                    reloading_on_sighup(components.reloader),
                ):
                    yield
        finally:
            tracing.close()

    app = FastAPI(
        title="Orbit API: stored exports",
        version="1.0.0",
        description="Get a stored audience export with a fresh signed Backblaze B2 download URL.",
        lifespan=lifespan,
        middleware=middleware_stack(settings, tracing),
        # Generated clients name their methods after the route: `get_stored_export`.
        generate_unique_id_function=operation_id,
        telemetry=telemetry(tracing),
    )
    install_error_handlers(app)
    app.include_router(exports.router)
    app.include_router(health.router)
    if settings.metrics_enabled:
        app.include_router(metrics_endpoint.router)
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    return app


@contextlib.contextmanager
def reloading_on_sighup(reloader: SettingsReloader | None) -> Iterator[None]:
    """SIGHUP reloads the settings in this process (one worker: `orbit-exports serve` with
    WEB_CONCURRENCY=1, `uvicorn app.main:app`), and in each worker of `orbit-exports serve`
    with several, whose supervisor passes the signal on (app/cli/uvicorn_compat.py)."""
    if reloader is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def telemetry(tracing: Tracing) -> TelemetryConfig:
    """FastAPI's own OpenTelemetry support: request spans when tracing is on. Never its metrics
    (ours are Prometheus') or its log records (ours are the JSON lines)."""
    if tracing.provider is None:
        # Off means off: FastAPI would otherwise look the global providers up per request.
        return {"tracing": False, "metrics": False, "logs": False}
    return {
        "tracer_provider": tracing.provider,
        "tracing": True,
        "metrics": False,
        "logs": False,
        # A span per dependency and for serialising, on every request, would cost more than
        # they tell: the spans that matter are the statement, the Redis calls and the B2 call.
        "operation_spans": False,
        # The provider is ours, built from the same variables (and from .env and secret files).
        "auto_configure": False,
        "exclude": untraced,
    }


def middleware_stack(settings: Settings, tracing: Tracing | None = None) -> list[Middleware]:
    """Every middleware of ours, outermost first: each request passes them in this order."""
    cors = (
        [Middleware(DashboardCORSMiddleware, origins=settings.cors_allow_origins)]
        if settings.cors_allow_origins
        else []
    )
    proxies = (
        # The client's address from X-Forwarded-For, when the peer is a proxy we trust (the
        # audit's client_ip, the access line): uvicorn's own parser.
        [Middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)]
        if settings.trusted_proxies
        else []
    )
    return [
        *proxies,
        # The request id, common headers, access line and metrics for every answer below,
        # CORS refusals included.
        Middleware(
            RequestContextMiddleware,
            observe=metrics.observe_request if settings.metrics_enabled else None,
            annotate=tracing.annotate if tracing is not None else None,
        ),
        *cors,
        # Inside CORS: an overload 503 or an unexpected 500 still carries the dashboard's
        # CORS headers.
        Middleware(
            RequestLimitsMiddleware,
            max_in_flight=settings.max_concurrent_requests,
            max_header_bytes=settings.max_header_bytes,
        ),
        Middleware(UnexpectedErrorMiddleware),
        # The caller, resolved before routing for the `CurrentPrincipal` dependency.
        Middleware(AuthenticationMiddleware),
    ]


def operation_id(route: APIRoute) -> str:
    return route.name


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        app.openapi_schema = schema
    return app.openapi_schema


def _app_from_environment() -> FastAPI:
    """The app for `uvicorn app.main:app`: invalid settings end the process with one line
    (exit code 2), never with pydantic's traceback, which quotes the values, secrets included."""
    try:
        return create_app(get_settings(), reload_from=load_settings)
    except ValidationError as exc:
        raise SystemExit(report_configuration_error(describe_invalid_settings(exc))) from None
    except ConfigurationError as exc:
        raise SystemExit(report_configuration_error(str(exc))) from None


app = _app_from_environment()
