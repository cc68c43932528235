"""B2 misbehaving, injected in the emulator: every failure is a fast 503 STORAGE_UNAVAILABLE,
token expiry costs one shared re-authorization, and a circuit breaker sheds load."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import update

from app.core.errors import StorageUnavailable
from app.db.tables import intent_audience_exports
from tests.support.app import MakeSettings, bearer, serve
from tests.support.assertions import assert_storage_unavailable
from tests.support.emulator import Emulator
from tests.support.storage import make_signer
from tests.support.waiting import wait_until
from tests.support.world import Tenant, World

SIGN = "b2_get_download_authorization"


@pytest.fixture(autouse=True)
def _no_fault_left(clean_emulator: Emulator) -> None:
    """Every test here injects faults: none outlives it."""


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


async def test_a_throttle_never_sleeps_past_the_deadline_and_b2_is_used_again_after_it(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    """B2 throttles with `Retry-After: 120`. b2sdk alone sleeps 120 s in the signing thread
    before retrying, so two throttled calls leave a two-thread pool asleep, and requests keep
    failing for two minutes after B2 has recovered. Here each request gets its 503 within
    STORAGE_TIMEOUT_SECONDS, the breaker opens for min(Retry-After, cooldown) and says so, and
    a request 15 s after recovery (on the breaker's clock) is signed."""
    export = await world.export(tenant)
    settings = make_settings(
        storage_max_threads=2,
        storage_timeout_seconds=1.0,
        storage_breaker_cooldown_seconds=10,
        export_url_cache_size=0,
    )
    now = [100.0]
    with make_signer(settings, monotonic=lambda: now[0]) as (signer, _):

        async def sign() -> None:
            await signer.sign(export["bucket_name"], export["file_name"], None)

        emulator.clear()
        emulator.inject(status=429, retryAfter=120, apis=[SIGN])
        waits = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as refused:
                await sign()
            assert time.monotonic() - started < settings.storage_timeout_seconds
            waits.append(refused.value.wait)
            now[0] += 2  # the breaker's open time runs down meanwhile
        assert waits == [10, 8, 6]
        assert emulator.calls(SIGN) == 1  # open at once: the throttle is honoured
        emulator.clear_faults()
        now[0] += 15
        await sign()


async def test_a_throttled_request_answers_503_with_the_breakers_retry_after(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    settings = make_settings(storage_breaker_cooldown_seconds=30, export_url_cache_size=0)
    async with serve(settings) as client:
        emulator.inject(status=503, retryAfter=120, apis=[SIGN])
        started = time.monotonic()
        response = await client.get(
            tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
        )
        assert time.monotonic() - started < settings.storage_timeout_seconds
        assert_storage_unavailable(response)
        assert 29 <= int(response.headers["Retry-After"]) <= 30


@pytest.mark.parametrize(
    "bad",
    [{"bucket_name": "no-such-bucket"}, {"file_name": "exports/bad\x01name.csv"}],
    ids=["no-such-bucket", "name-b2-refuses"],
)
async def test_one_tenants_refused_files_do_not_open_the_breaker_for_another(
    make_settings: MakeSettings, world: World, emulator: Emulator, bad: dict[str, str]
) -> None:
    """A per-file or per-bucket refusal answers that request with 502 STORAGE_ERROR (logged
    with the export's id) and is not an outage: 20 of them for organization A, then B's export
    is signed."""
    org_a, org_b = world.tenant(), world.tenant()
    refused = await world.export(org_a)
    async with world.db.begin() as conn:
        await conn.execute(
            update(intent_audience_exports)
            .where(intent_audience_exports.c.id == refused["id"])
            .values(**bad)
        )
    fine = await world.export(org_b)
    settings = make_settings(storage_breaker_threshold=5, export_url_cache_size=0)
    async with serve(settings) as client:
        for _ in range(20):
            response = await client.get(
                org_a.path(refused["id"]), headers=bearer(world.jwt(org_a.org))
            )
            assert response.status_code == 502, response.text
            assert response.json()["error"]["code"] == "STORAGE_ERROR"
        response = await client.get(org_b.path(fine["id"]), headers=bearer(world.jwt(org_b.org)))
        assert response.status_code == 200, response.text


async def test_a_half_open_trial_always_resolves(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    """The trial call meets B2 answers b2sdk cannot read (a JSON list, null fields) or is
    cancelled by a departing caller: the breaker must not stay "trial running" for ever (every
    later signing would be refused until a restart)."""
    export = await world.export(tenant)
    settings = make_settings(
        storage_breaker_threshold=1, storage_breaker_cooldown_seconds=10, export_url_cache_size=0
    )
    now = [100.0]
    with make_signer(settings, monotonic=lambda: now[0]) as (signer, _):

        async def sign() -> None:
            await signer.sign(export["bucket_name"], export["file_name"], None)

        emulator.inject(status=500, apis=[SIGN])
        with pytest.raises(StorageUnavailable):
            await sign()
        for body in ([], {"authorizationToken": None}, {"authorizationToken": []}, None):
            now[0] += 10
            if body is None:
                emulator.inject(delaySeconds=2.0, apis=[SIGN])
                trial = asyncio.create_task(sign())
                await wait_until(
                    lambda: emulator.calls(SIGN) >= 1, within=5, what="the trial is at B2"
                )
                trial.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await trial
                # No failure, and the slot is free: the next call is a trial again.
                assert signer_breaker_state(signer) == "half-open"
            else:
                emulator.inject(body=body, apis=[SIGN])
                with pytest.raises(StorageUnavailable):
                    await sign()  # the trial: a failure, the breaker opens again
                assert signer_breaker_state(signer) == "open", body
            emulator.clear()
        emulator.clear_faults()
        now[0] += 10
        await sign()
        assert signer_breaker_state(signer) == "closed"


def signer_breaker_state(signer: object) -> str:
    state: str = signer._b2.breaker.state  # type: ignore[attr-defined]
    return state
