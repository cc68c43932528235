"""B2 misbehaving, injected in the emulator: every failure is a fast 503 STORAGE_UNAVAILABLE,
token expiry costs one shared re-authorization, and a circuit breaker sheds load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from app.core.errors import StorageUnavailable
from tests.support.app import MakeSettings, bearer, serve
from tests.support.assertions import assert_storage_unavailable
from tests.support.emulator import Emulator
from tests.support.storage import make_signer
from tests.support.world import Tenant, World

SIGN = "b2_get_download_authorization"


@pytest.fixture(autouse=True)
def clean_emulator(emulator: Emulator) -> Iterator[None]:
    emulator.clear_faults()
    yield
    emulator.clear_faults()


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 503},
        {"malformed": True},
        {"delaySeconds": 2.0},
    ],
    ids=["500", "503", "malformed-json", "slow"],
)
async def test_b2_fault_is_503_within_the_storage_timeout(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator, fault: dict
) -> None:
    export = await world.export(tenant)
    settings = make_settings(storage_timeout_seconds=1.0, export_url_cache_size=0)
    async with serve(settings) as client:
        headers = bearer(world.jwt(tenant.org))
        assert (await client.get(tenant.path(export["id"]), headers=headers)).status_code == 200
        emulator.inject(apis=[SIGN], **fault)
        started = time.monotonic()
        response = await client.get(tenant.path(export["id"]), headers=headers)
        elapsed = time.monotonic() - started
        assert_storage_unavailable(response)
        assert elapsed < 1.3
        emulator.clear_faults()
        assert (await client.get(tenant.path(export["id"]), headers=headers)).status_code == 200


async def test_expired_account_token_costs_one_shared_reauthorization(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    exports = [await world.export(tenant) for _ in range(6)]
    async with serve(make_settings(export_url_cache_size=0)) as client:
        headers = bearer(world.jwt(tenant.org))
        assert (await client.get(tenant.path(exports[0]["id"]), headers=headers)).status_code == 200
        emulator.expire_account_tokens()
        emulator.clear()
        responses = await asyncio.gather(
            *(client.get(tenant.path(e["id"]), headers=headers) for e in exports)
        )
    assert [r.status_code for r in responses] == [200] * 6
    assert emulator.calls("b2_authorize_account") == 1


async def test_circuit_breaker_opens_then_closes_when_b2_recovers(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    settings = make_settings(
        storage_breaker_threshold=3, storage_breaker_cooldown_seconds=10, export_url_cache_size=0
    )
    now = [100.0]
    with make_signer(settings, monotonic=lambda: now[0]) as (signer, _):

        async def sign() -> None:
            await signer.sign(export["bucket_name"], export["file_name"], None)

        await sign()
        emulator.inject(status=500, apis=[SIGN])
        for _ in range(3):
            with pytest.raises(StorageUnavailable):
                await sign()
        emulator.clear()
        for _ in range(5):
            with pytest.raises(StorageUnavailable):
                await sign()
        assert emulator.calls(SIGN) == 0  # open: B2 is not called at all

        emulator.clear_faults()
        now[0] += 9.9
        with pytest.raises(StorageUnavailable):
            await sign()  # still open
        assert emulator.calls(SIGN) == 0
        now[0] += 0.1
        await sign()  # the trial succeeds and closes the breaker
        await sign()


async def test_failed_trial_reopens_the_breaker(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    settings = make_settings(
        storage_breaker_threshold=2, storage_breaker_cooldown_seconds=10, export_url_cache_size=0
    )
    now = [100.0]
    with make_signer(settings, monotonic=lambda: now[0]) as (signer, _):

        async def sign() -> None:
            await signer.sign(export["bucket_name"], export["file_name"], None)

        emulator.inject(status=503, apis=[SIGN])
        for _ in range(2):
            with pytest.raises(StorageUnavailable):
                await sign()
        now[0] += 10
        emulator.clear()
        with pytest.raises(StorageUnavailable):
            await sign()  # the trial
        assert emulator.calls(SIGN) >= 1
        emulator.clear()
        with pytest.raises(StorageUnavailable):
            await sign()  # open again
        assert emulator.calls(SIGN) == 0
        emulator.clear_faults()


async def test_an_open_breaker_answers_the_api_at_once(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    settings = make_settings(
        storage_breaker_threshold=2, storage_breaker_cooldown_seconds=60, export_url_cache_size=0
    )
    async with serve(settings) as client:
        headers = bearer(world.jwt(tenant.org))
        path = tenant.path(export["id"])
        emulator.inject(status=500, apis=[SIGN])
        try:
            for _ in range(2):
                assert_storage_unavailable(await client.get(path, headers=headers))
            emulator.clear()
            started = time.monotonic()
            for _ in range(5):
                assert_storage_unavailable(await client.get(path, headers=headers))
            assert time.monotonic() - started < 0.5
            assert emulator.calls(SIGN) == 0
        finally:
            emulator.clear_faults()


async def test_saturated_b2_thread_pool_sheds_requests_within_the_deadline(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    settings = make_settings(
        storage_max_threads=1,
        storage_timeout_seconds=0.5,
        storage_breaker_threshold=100,
        export_url_cache_size=0,
    )
    async with serve(settings) as client:
        headers = bearer(world.jwt(tenant.org))
        path = tenant.path(export["id"])
        assert (await client.get(path, headers=headers)).status_code == 200
        emulator.inject(delaySeconds=3.0, apis=[SIGN])
        started = time.monotonic()
        responses = await asyncio.gather(*(client.get(path, headers=headers) for _ in range(8)))
        elapsed = time.monotonic() - started
    for response in responses:
        assert_storage_unavailable(response)
    assert elapsed < 1.0
