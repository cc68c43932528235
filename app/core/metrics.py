"""Prometheus metrics: what is measured, and how the components report to it.

Components do not import this module's collectors: the composition root (`app.container`)
hands them callbacks (`observe_request`, `observe_b2_call`) and gives the `WorkerSampler`
functions that read the pool and the breaker.

With several workers every process writes its samples to files under PROMETHEUS_MULTIPROC_DIR
and a scrape, answered by whichever worker, adds them up (prometheus-client's multiprocess
mode). `orbit-exports serve` sets that folder up (`app.cli.serve`) before anything imports
prometheus-client, which is when the library decides where samples go; without it (one
process, or an app built in-process, as in the tests) samples stay in this process's default
registry, with the `python_*` and `process_*` collectors.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.core.process import METRICS_DIR_ENV

# Worker-local gauges (pool, breaker) are refreshed this often, and on every scrape.
SAMPLE_SECONDS = 1.0

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Label values come from a fixed set, so a hostile client cannot grow the series without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BREAKER_STATES = ("closed", "open", "half-open")

REQUESTS = Counter(
    "orbit_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "orbit_http_request_duration_seconds",
    "Time from receiving a request to the end of its response, by route template and status.",
    ["route", "status"],
    buckets=_LATENCY_BUCKETS,
)
B2_CALLS = Counter(
    "orbit_b2_calls_total",
    "HTTP calls to the B2 API (each attempt), by operation and outcome (2xx/4xx/5xx/error).",
    ["operation", "outcome"],
)
B2_SECONDS = Histogram(
    "orbit_b2_call_duration_seconds",
    "Duration of HTTP calls to the B2 API, by operation.",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
)
TOKEN_CACHE = Counter(
    "orbit_download_token_cache_total",
    "Download-token cache lookups: hit (a cached token was reused) or miss (B2 was asked);"
    " published every second.",
    ["result"],
)
SHARED_STATE_FALLBACKS = Counter(
    "orbit_shared_state_fallbacks_total",
    "Requests served with this process's own state because Redis was down or slow, by component.",
    ["component"],
)
SHARED_STATE_REJECTED = Counter(
    "orbit_shared_state_rejected_total",
    "Values read from Redis that failed authentication, decoding or binding to the request"
    " (each treated as a miss), by component.",
    ["component"],
)
IGNORED_NOTIFICATIONS = Counter(
    "orbit_key_change_notifications_ignored_total",
    "Notifications on the API-key channel whose payload was not a key hash (ignored).",
)
PREVIOUS_JWT_SECRET = Counter(
    "orbit_jwt_previous_secret_total",
    "Requests whose dashboard token was verified with one of JWT_PREVIOUS_SECRETS: the"
    " rotation's overlap can end once this stays flat.",
)
REFUSED_RELOADS = Counter(
    "orbit_settings_reload_refused_total",
    "Settings reloads refused because the new values were invalid (the running ones stayed).",
)
AUDIT_RECORDS = Counter(
    "orbit_audit_records_total",
    "Audit records of download URLs handed out: written, or dropped (queue full, or not"
    " written at shutdown).",
    ["outcome"],
)
AUDIT_QUEUE = Gauge(
    "orbit_audit_queue_records",
    "Audit records waiting to be written, summed over live workers.",
    multiprocess_mode="livesum",
)
LISTENING = Gauge(
    "orbit_db_listening",
    "Processes whose listening connection (API-key revocations) is verified by its heartbeat;"
    " below the number of processes, revocations wait for API_KEY_CACHE_SECONDS there.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "orbit_db_pool_size",
    "Connections the database pool keeps open (pool size), summed over live workers.",
    multiprocess_mode="livesum",
)
DB_POOL_CHECKED_OUT = Gauge(
    "orbit_db_pool_checked_out",
    "Database connections running a statement, summed over live workers.",
    multiprocess_mode="livesum",
)
BREAKER = Gauge(
    "orbit_storage_circuit_breaker_state",
    "Workers whose B2 circuit breaker is in this state (closed, open, half-open).",
    ["state"],
    multiprocess_mode="livesum",
)


# Label lookups cost as much as the updates themselves, on every request: keep the children.
_request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_request(route: str | None, method: str, status: int, seconds: float) -> None:
    key = (route or "unmatched", method if method in _METHODS else "other", status)
    series = _request_series.get(key)
    if series is None:
        series = (REQUESTS.labels(*key), REQUEST_SECONDS.labels(key[0], status))
        _request_series[key] = series
    series[0].inc()
    series[1].observe(seconds)


def observe_shared_state_fallback(component: str) -> None:
    SHARED_STATE_FALLBACKS.labels(component).inc()


def observe_shared_state_rejected(component: str) -> None:
    SHARED_STATE_REJECTED.labels(component).inc()


def observe_ignored_notification() -> None:
    IGNORED_NOTIFICATIONS.inc()


def observe_previous_jwt_secret() -> None:
    PREVIOUS_JWT_SECRET.inc()


def observe_refused_reload() -> None:
    REFUSED_RELOADS.inc()


def observe_audit_written(count: int) -> None:
    AUDIT_RECORDS.labels("written").inc(count)


def observe_audit_dropped(count: int) -> None:
    AUDIT_RECORDS.labels("dropped").inc(count)


def observe_listening(listening: bool) -> None:
    LISTENING.set(1 if listening else 0)


def observe_b2_call(url: str, outcome: str, seconds: float) -> None:
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    operation = name if name.startswith("b2_") and name.isidentifier() else "other"
    B2_CALLS.labels(operation, outcome).inc()
    B2_SECONDS.labels(operation).observe(seconds)


@dataclass(slots=True, eq=False, weakref_slot=True)
class LookupCounts:
    """Cache lookups counted in plain integers by their owner (one per request, where a
    multiprocess sample update costs several microseconds), published by the sampler."""

    hits: int = 0
    misses: int = 0


# Every LookupCounts of the process and what of it was published already: a scrape then counts
# all lookups made before it (one app per worker in production; several apps in the tests).
_published: weakref.WeakKeyDictionary[LookupCounts, tuple[int, int]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class WorkerSampler:
    """Refreshes this worker's gauges from the functions it was given, every SAMPLE_SECONDS
    and on every scrape (so the token-cache counters lag by at most SAMPLE_SECONDS)."""

    pool_size: Callable[[], int]
    connections_in_use: Callable[[], int]
    breaker_state: Callable[[], str | None]
    token_cache: LookupCounts | None = None
    audit_queue: Callable[[], int] | None = None

    def __post_init__(self) -> None:
        if self.token_cache is not None:
            _published.setdefault(self.token_cache, (0, 0))

    def sample(self) -> None:
        DB_POOL_SIZE.set(self.pool_size())
        DB_POOL_CHECKED_OUT.set(self.connections_in_use())
        if self.audit_queue is not None:
            AUDIT_QUEUE.set(self.audit_queue())
        for counts, (hits, misses) in list(_published.items()):
            TOKEN_CACHE.labels("hit").inc(counts.hits - hits)
            TOKEN_CACHE.labels("miss").inc(counts.misses - misses)
            _published[counts] = (counts.hits, counts.misses)
        current = self.breaker_state()
        for name in BREAKER_STATES:
            BREAKER.labels(name).set(1 if name == current else 0)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_SECONDS)


def exposition() -> tuple[bytes, str]:
    """The scrape's body and content type: every live worker's samples added up."""
    if os.environ.get(METRICS_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_exiting() -> None:
    """Drop this process's live gauges from the sums (multiprocess mode only)."""
    if os.environ.get(METRICS_DIR_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
