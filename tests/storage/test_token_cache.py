"""Download tokens are reused per file while fresh enough: one B2 call per file per token
lifetime, one call for concurrent misses, true remaining lifetime reported, bounded memory."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx

from tests.support.app import MakeSettings, bearer, download, serve
from tests.support.emulator import Emulator
from tests.support.storage import make_signer
from tests.support.world import Tenant, World

SIGN = "b2_get_download_authorization"


async def test_repeated_requests_for_one_export_make_one_b2_call(
    client: httpx.AsyncClient, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    warm, export = await world.export(tenant), await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    # The session's client shares the emulator with tests that expire account tokens: a first
    # request for another file renews this client's token, so the count below is exact.
    assert (await client.get(tenant.path(warm["id"]), headers=headers)).status_code == 200
    emulator.clear()
    bodies = [
        (await client.get(tenant.path(export["id"]), headers=headers)).json()["data"]
        for _ in range(5)
    ]
    assert emulator.calls(SIGN) == 1
    assert len({b["downloadUrl"] for b in bodies}) == 1
    assert len({b["downloadUrlExpiresAt"] for b in bodies}) == 1
    ttls = [b["downloadUrlTtlSeconds"] for b in bodies]
    assert ttls == sorted(ttls, reverse=True)
    assert ttls[0] <= 3600
    assert (await download(bodies[-1]["downloadUrl"])).content == export["content"]


async def test_concurrent_misses_for_one_file_make_one_call(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    async with serve(make_settings()) as client:
        headers = bearer(world.jwt(tenant.org))
        await client.get("/livez")
        emulator.clear()
        responses = await asyncio.gather(
            *(client.get(tenant.path(export["id"]), headers=headers) for _ in range(10))
        )
    assert {r.status_code for r in responses} == {200}
    assert emulator.calls(SIGN) == 1


async def test_token_is_reminted_when_less_than_the_minimum_remains(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    now = [datetime(2026, 11, 28, 12, 0, tzinfo=UTC)]
    with make_signer(make_settings(export_url_ttl_seconds=600), clock=lambda: now[0]) as (
        signer,
        cache,
    ):
        emulator.clear()
        first = await signer.sign(export["bucket_name"], export["file_name"], None)
        assert first.ttl_seconds == 600
        now[0] += timedelta(seconds=400)  # 200 s left >= 600 / 6
        reused = await signer.sign(export["bucket_name"], export["file_name"], None)
        assert reused.url == first.url
        assert reused.ttl_seconds == 200
        assert reused.expires_at == first.expires_at
        assert emulator.calls(SIGN) == 1
        now[0] += timedelta(seconds=101)  # 99 s left < 100
        fresh = await signer.sign(export["bucket_name"], export["file_name"], None)
        assert fresh.url != first.url
        assert fresh.ttl_seconds == 600
        assert emulator.calls(SIGN) == 2
        assert (cache.counts.hits, cache.counts.misses) == (1, 2)


async def test_cached_token_is_not_used_past_a_shorter_export_expiry(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    with make_signer(make_settings()) as (signer, _cache):
        first = await signer.sign(export["bucket_name"], export["file_name"], None)
        assert first.ttl_seconds == 3600
        soon = datetime.now(UTC) + timedelta(seconds=300)
        clamped = await signer.sign(export["bucket_name"], export["file_name"], soon)
        assert clamped.url != first.url
        assert clamped.expires_at <= soon
        assert 295 <= clamped.ttl_seconds <= 300


async def test_cache_is_bounded_least_recently_used_first(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    a, b, c = [await world.export(tenant) for _ in range(3)]
    with make_signer(make_settings(export_url_cache_size=2)) as (signer, cache):
        emulator.clear()
        for export in (a, b, a, c, a, b):
            await signer.sign(export["bucket_name"], export["file_name"], None)
        # a, b: mint; a: hit; c: mint (evicts b); a: hit; b: mint again.
        assert emulator.calls(SIGN) == 4
        assert len(cache) == 2
