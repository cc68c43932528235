"""Tracing's switch. Off (the default) it costs nothing: FastAPI's telemetry stays disabled and
no OpenTelemetry SDK, exporter or instrumentation module is imported; only this module is.

On (the standard OTEL_* variables, see `Settings.tracing`), `app.core.tracing_sdk` builds the
tracer provider that FastAPI's own request spans and the instrumentations of asyncpg, redis and
requests (b2sdk's HTTP client) report to.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager
from typing import Any

from app.core.settings import ConfigurationError, Settings

# Entered by the outermost middleware for the whole request, with the request's state; what it
# gives is called once the response starts (the caller is known by then).
RequestAnnotator = Callable[[dict[str, Any]], AbstractContextManager[Callable[[], None]]]

# Probes and scrapes: frequent, uninteresting, and they would drown the requests' traces.
UNTRACED_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


def untraced(scope: MutableMapping[str, Any]) -> bool:
    """FastAPI's `exclude` hook."""
    return scope.get("path") in UNTRACED_PATHS


class Tracing:
    """The tracer provider when tracing is on (else None), and what the middleware adds to
    each request's span."""

    def __init__(self, settings: Settings) -> None:
        self.provider: Any = None
        self.annotate: RequestAnnotator | None = None
        if not settings.tracing:
            return
        try:
            from app.core import tracing_sdk
        except ImportError:
            raise ConfigurationError(
                "tracing is switched on (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER)"
                " but the OpenTelemetry SDK is not installed: install orbit-exports[otel]"
            ) from None
        self.provider = tracing_sdk.start(settings)
        self.annotate = tracing_sdk.annotate

    def close(self) -> None:
        """Send the spans still buffered, then stop the exporter."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None
