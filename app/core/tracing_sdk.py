"""The OpenTelemetry SDK side of tracing, imported only when tracing is on (`app.core.tracing`).

One server span per request comes from FastAPI itself (`FastAPI(telemetry=...)`, set up in
`app.main`); below it, the standard instrumentations add a span per statement (asyncpg), per
Redis command (redis) and per B2 API call (requests, which b2sdk speaks through). None of them
records a statement's parameters, a Redis value or a request's headers or body.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import Attributes

from app.core import request_state
from app.core.principal import Principal
from app.core.settings import Settings


def start(settings: Settings) -> TracerProvider:
    """A tracer provider exporting in batches (a thread of the SDK's), with the instrumentations
    reporting to it."""
    resource = Resource.create(
        {SERVICE_NAME: settings.otel_service_name, SERVICE_VERSION: _version()}
    )
    provider = TracerProvider(sampler=sampler(settings), resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter(settings)))
    # AsyncPGInstrumentor.__init__ is not annotated.
    asyncpg_instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    for instrumentor in (asyncpg_instrumentor, RedisInstrumentor(), RequestsInstrumentor()):
        # Process-wide patches: one app per process reports to its own provider.
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=provider)
    return provider


def exporter(settings: Settings) -> SpanExporter:
    if settings.otel_traces_exporter == "console":
        # stdout carries the JSON log lines.
        return ConsoleSpanExporter(out=sys.stderr)
    headers = settings.otel_exporter_otlp_traces_headers or settings.otel_exporter_otlp_headers
    return OTLPSpanExporter(
        endpoint=settings.otlp_traces_endpoint,
        headers=parse_env_headers(headers.get_secret_value(), liberal=True) if headers else None,
    )


def sampler(settings: Settings) -> Sampler:
    ratio = settings.otel_traces_sampler_arg
    chosen: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }[settings.otel_traces_sampler]
    return RequestsOnly(chosen)


class RequestsOnly(Sampler):
    """Traces start at requests: a span with no parent that is not a request's (the readiness
    ping, the LISTEN heartbeat, the audit's batch insert, all on their own schedule) is dropped;
    everything else is the configured sampler's decision."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is not SpanKind.SERVER and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self._sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RequestsOnly{{{self._sampler.get_description()}}}"


@contextmanager
def annotate(state: dict[str, Any]) -> Iterator[Callable[[], None]]:
    """For one request: the request id on its span now, who called (and how it ended) once the
    response starts; never the credentials, the URL handed out or its token. A request the
    sampler left out is not traced below either, so the instrumentations skip their work for
    it (building each statement's attributes and a span nobody records)."""
    span = trace.get_current_span()
    if not span.is_recording():
        with suppress_instrumentation():
            yield _nothing
        return
    span.set_attribute("orbit.request_id", state[request_state.REQUEST_ID])

    def on_response() -> None:
        attributes: dict[str, str] = {}
        principal = state.get(request_state.AUTH)
        if isinstance(principal, Principal):
            attributes["orbit.organization_id"] = str(principal.organization_id)
            attributes["orbit.auth"] = principal.method
        for key, name in (
            (request_state.ERROR_CODE, "orbit.error_code"),
            (request_state.SIGNING, "orbit.signing"),
        ):
            value = state.get(key)
            if isinstance(value, str):
                attributes[name] = value
        span.set_attributes(attributes)

    yield on_response


def _nothing() -> None:
    pass


def _version() -> str:
    try:
        return version("orbit-exports")
    except PackageNotFoundError:
        return "unknown"
