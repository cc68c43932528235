"""Bounded work per worker: beyond MAX_CONCURRENT_REQUESTS in progress the service answers the
envelope's 503 SERVER_OVERLOADED at once (readable by the dashboard: CORS headers included);
headers beyond MAX_HEADER_BYTES are a 431 in the envelope (the real server refuses far larger
ones while reading them: tests/cli/test_uvicorn_compat.py)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.support.app import MakeSettings, bearer, serve
from tests.support.emulator import Emulator
from tests.support.waiting import wait_until
from tests.support.world import Tenant, World

ORIGIN = "https://dashboard.orbit.test"


@pytest.fixture
def slow_b2(emulator: Emulator) -> Emulator:
    emulator.inject(delaySeconds=1.0, apis=["b2_get_download_authorization"])
    yield emulator  # type: ignore[misc]
    emulator.clear_faults()


async def test_requests_beyond_the_limit_are_503_overloaded_at_once(
    make_settings: MakeSettings, world: World, tenant: Tenant, slow_b2: Emulator
) -> None:
    exports = [await world.export(tenant) for _ in range(2)]
    settings = make_settings(
        max_concurrent_requests=2,
        export_url_cache_size=0,
        cors_allow_origins=ORIGIN,
        storage_timeout_seconds=5,
    )
    headers = bearer(world.jwt(tenant.org)) | {"Origin": ORIGIN}
    async with serve(settings) as client:
        slow_b2.clear()
        busy = [
            asyncio.create_task(client.get(tenant.path(e["id"]), headers=headers)) for e in exports
        ]
        await wait_until(
            lambda: slow_b2.calls("b2_get_download_authorization") == 2,
            within=5,
            what="both requests are in progress (at B2)",
        )
        refused = await client.get(tenant.path(uuid.uuid4()), headers=headers)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "SERVER_OVERLOADED"
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert [r.status_code for r in await asyncio.gather(*busy)] == [200, 200]
        # Room again.
        assert (await client.get(tenant.path(uuid.uuid4()), headers=headers)).status_code == 404


async def test_headers_beyond_the_limit_are_431(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    async with serve(make_settings(max_header_bytes=4096)) as client:
        headers = bearer(world.jwt(tenant.org))
        assert (await client.get(tenant.path(uuid.uuid4()), headers=headers)).status_code == 404
        response = await client.get(
            tenant.path(uuid.uuid4()), headers=headers | {"X-Padding": "a" * 5000}
        )
        assert response.status_code == 431
        assert response.json()["error"]["code"] == "HEADERS_TOO_LARGE"
