"""With REDIS_URL, the per-credential rate limit holds across replicas; without Redis (down,
or slower than REDIS_TIMEOUT_SECONDS) requests are still served, limited per process, with a
warning and a metric, and Redis is used again once it answers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from orbit_dev.faults import TcpProxy
from redis.asyncio import Redis

from app.auth.rate_limit import InMemoryRateLimiter
from app.auth.shared_rate_limit import RedisRateLimiter, rate_key_prefix
from app.core.shared_state import RedisGuard, redis_client
from tests.support.app import MakeSettings, key_headers, serve
from tests.support.processes import free_port
from tests.support.waiting import wait_until
from tests.support.world import Tenant, World

PREFIX = "orbit:test:"
KEY_PREFIX = rate_key_prefix(PREFIX)
T = TypeVar("T")


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(redis_url).start()
    yield proxy
    await proxy.stop()


async def test_replicas_share_one_allowance(
    make_settings: MakeSettings, redis_url: str, world: World, tenant: Tenant
) -> None:
    key = await world.api_key(tenant.org)
    path = tenant.path(uuid.uuid4())
    settings = make_settings(redis_url=redis_url, rate_limit_per_minute=60, rate_limit_burst=3)
    async with serve(settings) as first, serve(settings) as second:
        statuses = [
            (await replica.get(path, headers=key_headers(key))).status_code
            for replica in (first, second, first, second, first)
        ]
        # Three in all, whichever replica answered: one replica alone would have allowed 3.
        assert statuses == [404, 404, 404, 429, 429]
        limited = await second.get(path, headers=key_headers(key))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 2


async def test_with_redis_down_requests_are_served_and_limited_per_process(
    make_settings: MakeSettings, world: World, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    key = await world.api_key(tenant.org)
    path = tenant.path(uuid.uuid4())
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(redis_url=nobody, rate_limit_per_minute=60, rate_limit_burst=3)
    caplog.set_level(logging.WARNING, logger="app.auth")
    async with serve(settings) as client:
        statuses = [
            (await client.get(path, headers=key_headers(key))).status_code for _ in range(4)
        ]
        assert statuses == [404, 404, 404, 429]
        assert (await client.get("/readyz")).status_code == 200
        metrics = (await client.get("/metrics")).text
    warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert 'orbit_shared_state_fallbacks_total{component="rate_limit"}' in metrics


async def test_a_stalled_redis_costs_a_request_at_most_the_timeout(
    make_settings: MakeSettings, redis_proxy: TcpProxy, world: World, tenant: Tenant
) -> None:
    key = await world.api_key(tenant.org)
    path = tenant.path(uuid.uuid4())
    settings = make_settings(
        redis_url=redis_proxy.url(), redis_timeout_seconds=0.05, rate_limit_per_minute=600
    )
    async with serve(settings) as client:
        assert (await client.get(path, headers=key_headers(key))).status_code == 404
        redis_proxy.set_mode("stall")
        for _ in range(5):
            started = time.monotonic()
            assert (await client.get(path, headers=key_headers(key))).status_code == 404
            assert time.monotonic() - started < 0.5


async def test_redis_is_used_again_once_it_answers(redis_url: str, redis_proxy: TcpProxy) -> None:
    now = [100.0]
    client = redis_client(redis_proxy.url(), 0.05)
    limiter = RedisRateLimiter(
        RedisGuard(client, "rate_limit", timeout=0.05, monotonic=lambda: now[0]),
        60,
        2,
        InMemoryRateLimiter(60, 2, monotonic=lambda: now[0]),
        prefix=PREFIX,
    )
    credential = f"test:{uuid.uuid4()}"
    direct = Redis.from_url(redis_url)
    try:
        redis_proxy.set_mode("stall")
        assert await limiter.retry_after(credential) is None  # the local bucket answered
        assert await direct.get(KEY_PREFIX + credential) is None
        redis_proxy.set_mode("pass")
        redis_proxy.drop_all()
        now[0] += 0.5
        assert await limiter.retry_after(credential) is None  # still paused: local again
        assert await direct.get(KEY_PREFIX + credential) is None
        now[0] += 0.5
        assert await limiter.retry_after(credential) is None  # Redis again
        assert await direct.get(KEY_PREFIX + credential) is not None
    finally:
        await client.aclose()
        await direct.aclose()


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_checks_share_one_script_call_and_keep_exact_decisions(
    redis_url: str,
) -> None:
    client = redis_client(redis_url, 0.5)
    limiter = RedisRateLimiter(
        RedisGuard(client, "rate_limit", timeout=0.5),
        60,
        5,
        InMemoryRateLimiter(60, 5),
        prefix=PREFIX,
    )
    direct = Redis.from_url(redis_url)
    busy, quiet = f"test:{uuid.uuid4()}", f"test:{uuid.uuid4()}"
    try:
        await limiter.retry_after(f"test:{uuid.uuid4()}")  # loads the script
        before = await _evalsha_calls(direct)
        results = await asyncio.gather(
            *(limiter.retry_after(busy) for _ in range(20)), limiter.retry_after(quiet)
        )
        calls = await _evalsha_calls(direct) - before
    finally:
        await client.aclose()
        await direct.aclose()
    # The burst of 5, in arrival order, exactly as one call each would decide; the other
    # credential is not held back by the busy one.
    assert results[:5] == [None] * 5
    assert all(wait is not None and wait >= 1 for wait in results[5:20])
    assert results[20] is None
    assert calls == 1


async def test_a_cancelled_check_does_not_hold_up_the_others(redis_url: str) -> None:
    client = redis_client(redis_url, 0.5)
    limiter = RedisRateLimiter(
        RedisGuard(client, "rate_limit", timeout=0.5),
        600,
        10,
        InMemoryRateLimiter(600, 10),
        prefix=PREFIX,
    )
    credential = f"test:{uuid.uuid4()}"
    try:
        first = asyncio.create_task(limiter.retry_after(credential))
        second = asyncio.create_task(limiter.retry_after(credential))
        await asyncio.sleep(0)
        first.cancel()
        assert await second is None
        assert await limiter.retry_after(credential) is None
    finally:
        await client.aclose()


class CallingGuard(RedisGuard):
    """The guard, telling which task is calling Redis through it: the limiter's sender."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.callers: list[asyncio.Task[Any]] = []

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self.callers.append(task)
        return await super().run(operation)


async def test_waiting_checks_fall_back_when_the_sender_is_stopped(redis_proxy: TcpProxy) -> None:
    client = redis_client(redis_proxy.url(), 5.0)
    guard = CallingGuard(client, "rate_limit", timeout=5.0)
    limiter = RedisRateLimiter(guard, 60, 1, InMemoryRateLimiter(60, 1), prefix=PREFIX)
    credential = f"test:{uuid.uuid4()}"
    try:
        redis_proxy.set_mode("stall")
        checks = [asyncio.create_task(limiter.retry_after(credential)) for _ in range(3)]
        await wait_until(
            lambda: bool(guard.callers), within=5, what="the waiting checks were sent to Redis"
        )
        # The sender is inside its (stalled) Redis call, with every check waiting on it; it is
        # stopped there, as at shutdown.
        assert not any(check.done() for check in checks)
        [sender] = guard.callers
        sender.cancel()
        # Decided by the local bucket (burst 1), at once, not after Redis's 5 s.
        async with asyncio.timeout(1):
            assert await asyncio.gather(*checks) == [None, 1, 1]
    finally:
        await client.aclose()


async def test_an_answer_that_is_not_the_scripts_falls_back(redis_url: str) -> None:
    """Another script stored under our script's hash (or anything else answering) is treated as
    Redis being unavailable: the local bucket decides, nothing raises."""
    now = [100.0]
    client = redis_client(redis_url, 0.5)
    limiter = RedisRateLimiter(
        RedisGuard(client, "rate_limit", timeout=0.5, monotonic=lambda: now[0]),
        60,
        1,
        InMemoryRateLimiter(60, 5, monotonic=lambda: now[0]),
        prefix=PREFIX,
    )
    credential = f"test:{uuid.uuid4()}"
    try:
        # Not a list; a list of the wrong length; a list of strings.
        for impostor in ("return 'not a list'", "return {}", "return {'x'}"):
            limiter._script.sha = await client.script_load(impostor)
            now[0] += 2  # past the pause after the previous failure: Redis is asked again
            # Redis's burst of 1 would refuse all but the first; the local bucket allows.
            assert await limiter.retry_after(credential) is None
    finally:
        await client.aclose()
