"""Tracing's switch: which variables turn it on, that off loads nothing of OpenTelemetry's but
the API FastAPI imports, and the sampler that keeps traces to requests. The spans themselves are
checked against a real receiver in tests/system/test_tracing.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import app.core
from app.core.settings import ConfigurationError, Settings, describe_invalid_settings
from app.core.tracing import Tracing, untraced
from app.main import telemetry
from tests.support.world import Tenant, World

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "http://127.0.0.1:4318"


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("values", "on"),
    [
        ({}, False),
        ({"otel_exporter_otlp_endpoint": ENDPOINT}, True),
        ({"otel_exporter_otlp_traces_endpoint": ENDPOINT + "/v1/traces"}, True),
        ({"otel_traces_exporter": "otlp"}, True),
        ({"otel_traces_exporter": "console"}, True),
        ({"otel_traces_exporter": "none", "otel_exporter_otlp_endpoint": ENDPOINT}, False),
        ({"otel_sdk_disabled": True, "otel_exporter_otlp_endpoint": ENDPOINT}, False),
        # The service's name or a sampler alone ask for nothing.
        ({"otel_service_name": "x", "otel_traces_sampler": "always_on"}, False),
    ],
)
def test_the_standard_variables_switch_tracing_on(values: dict[str, Any], on: bool) -> None:
    assert make(**values).tracing is on


@pytest.mark.parametrize(
    ("values", "endpoint"),
    [
        ({}, "http://localhost:4318/v1/traces"),
        (
            {"otel_exporter_otlp_endpoint": "https://collector:4318/"},
            "https://collector:4318/v1/traces",
        ),
        (
            {
                "otel_exporter_otlp_endpoint": "https://collector:4318",
                "otel_exporter_otlp_traces_endpoint": "https://traces.example/otlp",
            },
            "https://traces.example/otlp",
        ),
    ],
)
def test_the_traces_endpoint_follows_the_specification(
    values: dict[str, Any], endpoint: str
) -> None:
    assert make(**values).otlp_traces_endpoint == endpoint


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://x/"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_bad_tracing_variables_are_refused_by_name(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        make()
    assert named in describe_invalid_settings(refused.value)


def test_a_placeholder_in_the_exporter_headers_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="OTEL_EXPORTER_OTLP_HEADERS"):
        make(
            environment="production",
            database_url="postgresql://u@h/d",
            otel_exporter_otlp_headers="x-api-key=changeme",
        )


def test_off_gives_fastapi_a_disabled_telemetry() -> None:
    tracing = Tracing(make())
    assert tracing.provider is None and tracing.annotate is None
    assert telemetry(tracing) == {"tracing": False, "metrics": False, "logs": False}


def test_on_without_the_extra_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if `orbit-exports[otel]` were not installed.
    monkeypatch.setitem(sys.modules, "app.core.tracing_sdk", None)
    monkeypatch.delattr(app.core, "tracing_sdk", raising=False)
    with pytest.raises(ConfigurationError, match=r"install orbit-exports\[otel\]"):
        Tracing(make(otel_exporter_otlp_endpoint=ENDPOINT))


def test_probes_are_not_traced() -> None:
    assert all(untraced({"path": p}) for p in ("/livez", "/readyz", "/metrics"))
    assert not untraced({"path": "/v1/intent/audiences/a/runs/b/exports/c"})


# What a process that served a request has loaded of OpenTelemetry (FastAPI imports the API).
_LOADED = """
import asyncio, json, sys
from app.core.settings import Settings
from tests.support.app import key_headers, serve

async def main() -> None:
    async with serve(Settings()) as client:
        response = await client.get(sys.argv[1], headers=key_headers(sys.argv[2]))
        assert response.status_code == 200, response.text

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "app.core.tracing")))
with open(sys.argv[3], "w") as out:
    json.dump(loaded, out)
"""


# Nothing of OpenTelemetry's beyond the API that FastAPI imports.
_BEYOND_THE_API = (
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "opentelemetry.instrumentation",
    "opentelemetry.proto",
    "app.core.tracing_sdk",
)
# redis-py (8.x) imports the SDK's metrics module itself when it is installed, for metrics of
# its own that nobody here switches on: with REDIS_URL, nothing that traces or exports.
_TRACING_PARTS = (
    *(p for p in _BEYOND_THE_API if p != "opentelemetry.sdk"),
    "opentelemetry.sdk.trace",
)


@pytest.mark.parametrize(
    ("env", "forbidden"),
    [
        ({}, _BEYOND_THE_API),
        (
            {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT},
            _BEYOND_THE_API,
        ),
        (
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT},
            _BEYOND_THE_API,
        ),
        ({"REDIS_URL": "redis"}, _TRACING_PARTS),
    ],
    ids=["unset", "sdk-disabled", "exporter-none", "with-redis"],
)
async def test_off_means_off_no_sdk_exporter_or_instrumentation_is_loaded(
    cli_env: dict[str, str],
    redis_url: str,
    world: World,
    tenant: Tenant,
    env: dict[str, str],
    forbidden: tuple[str, ...],
    tmp_path: Path,
) -> None:
    export = await world.export(tenant)
    key = await world.api_key(tenant.org)
    if "REDIS_URL" in env:
        env = env | {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "orbit-off-means-off:"}
    environment = {k: v for k, v in cli_env.items() if not k.startswith("OTEL_")} | env
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _LOADED, tenant.path(export["id"]), key, str(tmp_path / "loaded")],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads((tmp_path / "loaded").read_text())
    assert "opentelemetry.trace" in loaded  # FastAPI's import of the API: the test sees modules
    assert [m for m in loaded if m.startswith(forbidden)] == []


class TestSampler:
    """Traces start at requests, at the configured rate; children follow their request."""

    @staticmethod
    def decide(settings: Settings, kind: str, parent: Any = None, trace_id: int = 1) -> str:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        from app.core.tracing_sdk import sampler

        context = trace.set_span_in_context(parent) if parent is not None else None
        result = sampler(settings).should_sample(context, trace_id, "x", SpanKind[kind])
        return result.decision.name

    @staticmethod
    def remote_parent(sampled: bool) -> Any:
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        return NonRecordingSpan(SpanContext(7, 9, is_remote=True, trace_flags=flags))

    def test_a_span_no_request_started_is_dropped(self) -> None:
        # The readiness ping, the LISTEN heartbeat, the audit's batch insert.
        always = make(otel_traces_sampler="always_on")
        assert self.decide(always, "CLIENT") == "DROP"
        assert self.decide(always, "INTERNAL") == "DROP"
        assert self.decide(always, "SERVER") == "RECORD_AND_SAMPLE"

    def test_the_ratio_decides_per_trace(self) -> None:
        half = make(otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=0.5)
        assert self.decide(half, "SERVER", trace_id=1) == "RECORD_AND_SAMPLE"
        assert self.decide(half, "SERVER", trace_id=2**128 - 1) == "DROP"
        none = make(otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=0)
        assert self.decide(none, "SERVER") == "DROP"

    def test_children_follow_their_parent(self) -> None:
        settings = make(otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=0)
        assert self.decide(settings, "CLIENT", self.remote_parent(True)) == "RECORD_AND_SAMPLE"
        assert self.decide(settings, "CLIENT", self.remote_parent(False)) == "DROP"
        # A sampler that is not parent-based ignores a caller's decision.
        ratio = make(otel_traces_sampler="traceidratio", otel_traces_sampler_arg=0)
        assert self.decide(ratio, "SERVER", self.remote_parent(True)) == "DROP"


class TestRequestSpan:
    """What the outermost middleware adds to a request's span, and what it spares the
    instrumentations when the sampler left the request out."""

    def test_a_traced_request_gets_its_id_and_caller(self) -> None:
        import uuid

        from opentelemetry.instrumentation.utils import is_instrumentation_enabled
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace import SpanKind

        from app.core import request_state
        from app.core.principal import Principal
        from app.core.tracing_sdk import annotate

        org = uuid.uuid4()
        state: dict[str, Any] = {request_state.REQUEST_ID: "req-1"}
        tracer = TracerProvider().get_tracer("test")
        with (
            tracer.start_as_current_span("GET", kind=SpanKind.SERVER) as span,
            annotate(state) as on_response,
        ):
            assert is_instrumentation_enabled()
            state[request_state.AUTH] = Principal(org, "key-id", "api_key", "sk_live_ab")
            state[request_state.ERROR_CODE] = "EXPORT_NOT_READY"
            on_response()
        assert dict(span.attributes or {}) == {
            "orbit.request_id": "req-1",
            "orbit.organization_id": str(org),
            "orbit.auth": "api_key",
            "orbit.error_code": "EXPORT_NOT_READY",
        }

    def test_a_request_left_out_is_not_instrumented_below(self) -> None:
        from opentelemetry.instrumentation.utils import is_instrumentation_enabled

        from app.core import request_state
        from app.core.tracing_sdk import annotate

        # No recording span: the sampler said no (or FastAPI's exclude hook did).
        with annotate({request_state.REQUEST_ID: "req-2"}) as on_response:
            assert not is_instrumentation_enabled()
            on_response()
        assert is_instrumentation_enabled()
