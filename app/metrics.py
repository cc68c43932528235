"""Prometheus metrics, served at GET /metrics.

With several workers every process writes its samples to files under PROMETHEUS_MULTIPROC_DIR
and a scrape, answered by whichever worker, adds them up (prometheus-client's multiprocess
mode). `orbit-exports serve` sets that folder up (app/cli.py) before anything imports
prometheus-client, which is when the library decides where samples go; without it (an app built
in-process, as in the tests) samples stay in this process's default registry.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import weakref
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
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
from sqlalchemy.pool import QueuePool

from app.errors import Unauthorized
from app.state import AppState, app_state

if TYPE_CHECKING:
    # app.storage imports this module for its B2 call metrics.
    from app.storage import DownloadSigner

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
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


def observe_b2_call(url: str, outcome: str, seconds: float) -> None:
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    operation = name if name.startswith("b2_") and name.isidentifier() else "other"
    B2_CALLS.labels(operation, outcome).inc()
    B2_SECONDS.labels(operation).observe(seconds)


# Token-cache lookups are counted by the signer in plain integers (one per request, where a
# multiprocess sample update costs several microseconds) and published here as increments.
_published_cache_counts: weakref.WeakKeyDictionary[DownloadSigner, tuple[int, int]] = (
    weakref.WeakKeyDictionary()
)


def sample(state: AppState) -> None:
    """Refresh this worker's gauges from the pool and the breaker, and publish the signer's
    token-cache counts (so those counters lag by at most SAMPLE_SECONDS)."""
    pool = state.db.engine.pool
    if isinstance(pool, QueuePool):
        DB_POOL_SIZE.set(pool.size())
    DB_POOL_CHECKED_OUT.set(state.db.in_use)
    signer = state.signer
    if signer is not None:
        _published_cache_counts.setdefault(signer, (0, 0))
    # Every signer of this process, not only this app's: a scrape then counts all lookups made
    # before it (one app per worker in production; several in-process apps in the tests).
    for known, (hits, misses) in list(_published_cache_counts.items()):
        TOKEN_CACHE.labels("hit").inc(known.cache_hits - hits)
        TOKEN_CACHE.labels("miss").inc(known.cache_misses - misses)
        _published_cache_counts[known] = (known.cache_hits, known.cache_misses)
    current = signer.breaker.state if signer is not None else None
    for name in BREAKER_STATES:
        BREAKER.labels(name).set(1 if name == current else 0)


async def sample_forever(state: AppState) -> None:
    while True:
        sample(state)
        await asyncio.sleep(SAMPLE_SECONDS)


def worker_exiting() -> None:
    """Drop this process's live gauges from the sums (multiprocess mode only)."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    token = state.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise Unauthorized("Scraping metrics needs Authorization: Bearer <METRICS_TOKEN>.")
    sample(state)
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
