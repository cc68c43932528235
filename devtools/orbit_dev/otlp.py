"""An OTLP/HTTP trace receiver on 127.0.0.1: what the tracing tests check spans against, and
the sink `make bench` exports to (`orbit-dev otlp-sink`, which only counts what it is sent)."""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# OTLP's span kinds, by their number in the protocol.
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_EMPTY_ANSWER = ExportTraceServiceResponse().SerializeToString()


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


@dataclass
class OtlpReceiver:
    """Listens until closed; with `decode`, keeps every span it is sent."""

    decode: bool = True
    port: int = 0
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._received(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(_EMPTY_ANSWER)))
                self.end_headers()
                self.wfile.write(_EMPTY_ANSWER)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _received(self, body: bytes) -> None:
        spans = _spans(body) if self.decode else []
        with self._changed:
            self.exports += 1
            self.spans.extend(spans)
            self._changed.notify_all()

    def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], within: float, what: str
    ) -> list[ReceivedSpan]:
        """The spans once `condition(spans)` holds; fails (AssertionError) past `within`."""
        deadline = time.monotonic() + within
        with self._changed:
            while not condition(self.spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"within {within:.0f} s: {what} ({len(self.spans)} spans)")
                self._changed.wait(left)
            return list(self.spans)


def _spans(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def serve_sink(port: int) -> int:
    """`orbit-dev otlp-sink`: answers every export, decodes none of them, until interrupted."""
    with OtlpReceiver(decode=False, port=port) as receiver:
        print(f"otlp-sink: listening on {receiver.url}", flush=True)  # noqa: T201
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0
