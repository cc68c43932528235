"""With REDIS_URL, replicas share download tokens: B2 sees one authorization per file per token
lifetime across the fleet, concurrent misses on different replicas included; with Redis down
each replica signs on its own and nothing fails."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from tests.support.app import MakeSettings, bearer, download, serve
from tests.support.emulator import Emulator
from tests.support.processes import free_port
from tests.support.world import Tenant, World

SIGN = "b2_get_download_authorization"


async def test_replicas_share_one_authorization_per_file(
    make_settings: MakeSettings, redis_url: str, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    exports = [await world.export(tenant) for _ in range(2)]
    headers = bearer(world.jwt(tenant.org))
    settings = make_settings(redis_url=redis_url, rate_limit_per_minute=0)
    async with serve(settings) as first, serve(settings) as second:
        await asyncio.gather(first.get("/livez"), second.get("/livez"))
        emulator.clear()
        # Concurrent misses on both replicas for the first file, then the other file on one
        # replica and later on the other.
        together = await asyncio.gather(
            *(
                replica.get(tenant.path(exports[0]["id"]), headers=headers)
                for replica in (first, second) * 4
            )
        )
        one = await first.get(tenant.path(exports[1]["id"]), headers=headers)
        other = await second.get(tenant.path(exports[1]["id"]), headers=headers)
    assert {r.status_code for r in [*together, one, other]} == {200}
    assert emulator.calls(SIGN) == 2
    assert len({r.json()["data"]["downloadUrl"] for r in together}) == 1
    assert other.json()["data"]["downloadUrl"] == one.json()["data"]["downloadUrl"]
    got = await download(other.json()["data"]["downloadUrl"])
    assert got.content == exports[1]["content"]


async def test_a_shared_token_never_outlives_the_callers_export(
    make_settings: MakeSettings, redis_url: str, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=10)
    later = await world.export(tenant)
    # Another export row for the same file (a re-run pointing at it), expiring sooner.
    early = await world.export(
        tenant, file_name=later["file_name"], content=later["content"], expires_at=soon
    )
    headers = bearer(world.jwt(tenant.org))
    settings = make_settings(redis_url=redis_url, rate_limit_per_minute=0)
    async with serve(settings) as first, serve(settings) as second:
        long_lived = (await first.get(tenant.path(later["id"]), headers=headers)).json()
        short = (await second.get(tenant.path(early["id"]), headers=headers)).json()
    assert datetime.fromisoformat(short["data"]["downloadUrlExpiresAt"]) <= soon
    assert short["data"]["downloadUrl"] != long_lived["data"]["downloadUrl"]


async def test_with_redis_down_every_replica_signs_alone(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(redis_url=nobody, rate_limit_per_minute=0)
    async with serve(settings) as first, serve(settings) as second:
        await asyncio.gather(first.get("/livez"), second.get("/livez"))
        emulator.clear()
        responses = [
            await replica.get(tenant.path(export["id"]), headers=headers)
            for replica in (first, second, first, second)
        ]
        metrics = (await first.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * 4
    assert emulator.calls(SIGN) == 2  # one per replica, each then reusing its own
    assert 'orbit_shared_state_fallbacks_total{component="download_tokens"}' in metrics
