"""Per-credential rate limiting: 429 RATE_LIMITED with Retry-After; no cross-key starvation."""

from __future__ import annotations

import uuid

import httpx

from app.auth.rate_limit import InMemoryRateLimiter
from tests.support.app import MakeSettings, bearer, key_headers, serve
from tests.support.world import World


async def test_burst_from_one_key_is_429_and_does_not_starve_another(
    make_settings: MakeSettings, world: World
) -> None:
    tenant = world.tenant()
    noisy, quiet = await world.api_key(tenant.org), await world.api_key(tenant.org)
    settings = make_settings(rate_limit_per_minute=60, rate_limit_burst=3)
    async with serve(settings) as client:
        path = tenant.path(uuid.uuid4())
        statuses = [
            (await client.get(path, headers=key_headers(noisy))).status_code for _ in range(3)
        ]
        assert statuses == [404, 404, 404]
        limited = await client.get(path, headers=key_headers(noisy))
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "RATE_LIMITED"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # Another key of the same organization, and a dashboard user, are unaffected.
        assert (await client.get(path, headers=key_headers(quiet))).status_code == 404
        assert (await client.get(path, headers=bearer(world.jwt(tenant.org)))).status_code == 404


async def test_rate_limit_zero_turns_it_off(make_settings: MakeSettings, world: World) -> None:
    tenant = world.tenant()
    token = world.jwt(tenant.org)
    async with serve(make_settings(rate_limit_per_minute=0, rate_limit_burst=1)) as client:
        for _ in range(20):
            response = await client.get(tenant.path(uuid.uuid4()), headers=bearer(token))
            assert response.status_code == 404


async def test_unauthenticated_requests_are_401_not_429(
    make_settings: MakeSettings, world: World
) -> None:
    tenant = world.tenant()
    async with serve(make_settings(rate_limit_per_minute=60, rate_limit_burst=1)) as client:
        for _ in range(3):
            response = await client.get(tenant.path(uuid.uuid4()))
            assert response.status_code == 401


def test_bucket_refills_at_the_configured_rate() -> None:
    now = [0.0]
    limiter = InMemoryRateLimiter(per_minute=120, burst=2, monotonic=lambda: now[0])
    assert limiter.take("k") is None
    assert limiter.take("k") is None
    assert limiter.take("k") == 1
    now[0] += 0.5  # 2 per second: one token back
    assert limiter.take("k") is None
    assert limiter.take("k") == 1
    assert limiter.take("other") is None


async def test_default_limit_is_generous(client: httpx.AsyncClient, world: World) -> None:
    tenant = world.tenant()
    token = world.jwt(tenant.org)
    for _ in range(60):
        assert (
            await client.get(tenant.path(uuid.uuid4()), headers=bearer(token))
        ).status_code == 404
