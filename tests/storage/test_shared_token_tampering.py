"""What Redis holds for the fleet's download tokens is useless to a reader and harmless from a
writer: values are sealed and bound to the deployment, the signer, the bucket and the file, so a
value read back that does not open for the row's file is a miss (counted, the file signed
afresh), never a 500, never a URL for another file, never a wrong status. Keys are namespaced
per deployment, and a replica waiting for another's mint stops waiting once that replica gave
up."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from redis.asyncio import Redis

from app.core.sealing import Sealer
from app.core.settings import Settings
from app.core.shared_state import key_prefix, shared_state_secret
from app.storage.shared_token_cache import SEALING_PURPOSE, redis_keys
from tests.support.app import MakeSettings, bearer, download, serve
from tests.support.constants import B2_KEY_ID, SHARED_STATE_SECRET
from tests.support.emulator import Emulator
from tests.support.world import Tenant, World

SIGN = "b2_get_download_authorization"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def names_for(settings: Settings, world: World, export: dict[str, object]) -> tuple[str, str]:
    """The Redis key names of an export's token and mint lock, as the service derives them."""
    prefix = key_prefix(settings, world.db.url.render_as_string())
    sealer = Sealer(SHARED_STATE_SECRET.encode(), SEALING_PURPOSE)
    file_key = (str(export["bucket_name"]), str(export["file_name"]))
    return redis_keys(prefix, B2_KEY_ID, sealer, file_key)


def token_of(response: httpx.Response) -> str:
    url = response.json()["data"]["downloadUrl"]
    return parse_qs(urlsplit(url).query)["Authorization"][0]


def file_of(response: httpx.Response) -> str:
    return unquote(urlsplit(response.json()["data"]["downloadUrl"]).path).split("/", 3)[3]


def rejected(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('orbit_shared_state_rejected_total{component="download_tokens"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_redis_reader_learns_nothing_usable(
    make_settings: MakeSettings, redis_url: str, redis: Redis, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    settings = make_settings(redis_url=redis_url, rate_limit_per_minute=0)
    async with serve(settings) as client:
        answer = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    token_key, _ = names_for(settings, world, export)
    stored = await redis.get(token_key)
    assert stored is not None
    for secret in (token_of(answer), export["file_name"], export["bucket_name"]):
        assert secret.encode() not in stored
        assert secret not in token_key
    assert b"http" not in stored


async def test_a_value_moved_to_another_files_key_is_refused(
    make_settings: MakeSettings,
    redis_url: str,
    redis: Redis,
    world: World,
    emulator: Emulator,
) -> None:
    """Organization A's token written under organization B's file: B gets a URL for its own
    file, signed afresh, and the swap is counted."""
    a, b = world.tenant(), world.tenant()
    export_a, export_b = await world.export(a), await world.export(b)
    settings = make_settings(redis_url=redis_url, rate_limit_per_minute=0)
    key_a, _ = names_for(settings, world, export_a)
    key_b, _ = names_for(settings, world, export_b)
    async with serve(settings) as first:
        first_a = await first.get(a.path(export_a["id"]), headers=bearer(world.jwt(a.org)))
        await first.get(b.path(export_b["id"]), headers=bearer(world.jwt(b.org)))
    value_a, ttl = await redis.get(key_a), await redis.pttl(key_a)
    await redis.set(key_b, value_a, px=ttl)
    async with serve(settings) as second:  # a replica with nothing of its own yet
        before = rejected((await second.get("/metrics")).text)
        emulator.clear()
        answer = await second.get(b.path(export_b["id"]), headers=bearer(world.jwt(b.org)))
        after = rejected((await second.get("/metrics")).text)
    assert answer.status_code == 200
    assert file_of(answer) == export_b["file_name"]
    assert token_of(answer) != token_of(first_a)
    assert emulator.calls(SIGN) == 1
    assert after == before + 1
    assert (await download(answer.json()["data"]["downloadUrl"])).content == export_b["content"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"garbage",
        b"\x01" + os.urandom(40),
        b"\x02" + os.urandom(40),
        b'{"url": "https://evil.example/file", "expiresAt": "2999-01-01T00:00:00+00:00"}',
        "truncated",
    ],
    ids=["empty", "text", "random-v1", "random-v2", "old-json-format", "truncated"],
)
async def test_a_malformed_value_is_a_miss_never_a_500(
    make_settings: MakeSettings,
    redis_url: str,
    redis: Redis,
    world: World,
    tenant: Tenant,
    garbage: bytes | str,
) -> None:
    export = await world.export(tenant)
    settings = make_settings(redis_url=redis_url, rate_limit_per_minute=0)
    token_key, _ = names_for(settings, world, export)
    headers = bearer(world.jwt(tenant.org))
    if garbage == "truncated":
        async with serve(settings) as first:
            await first.get(tenant.path(export["id"]), headers=headers)
        garbage = (await redis.get(token_key))[:-5]
    await redis.set(token_key, garbage, px=600_000)
    async with serve(settings) as client:
        before = rejected((await client.get("/metrics")).text)
        answer = await client.get(tenant.path(export["id"]), headers=headers)
        after = rejected((await client.get("/metrics")).text)
    assert answer.status_code == 200
    assert file_of(answer) == export["file_name"]
    assert urlsplit(answer.json()["data"]["downloadUrl"]).hostname == "127.0.0.1"
    assert after == before + 1


async def test_two_deployments_sharing_redis_never_share_a_token(
    make_settings: MakeSettings, redis_url: str, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    staging = make_settings(redis_url=redis_url, redis_key_prefix="staging:")
    production = make_settings(redis_url=redis_url, redis_key_prefix="production:")
    async with serve(staging) as one, serve(production) as other:
        emulator.clear()
        first = await one.get(tenant.path(export["id"]), headers=headers)
        second = await other.get(tenant.path(export["id"]), headers=headers)
    assert emulator.calls(SIGN) == 2
    assert token_of(first) != token_of(second)


def test_the_default_prefix_differs_between_two_databases() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    one = key_prefix(settings, "postgresql+asyncpg://u:p@db-a:5432/orbit")
    two = key_prefix(settings, "postgresql+asyncpg://u:p@db-b:5432/orbit")
    again = key_prefix(settings, "postgresql+asyncpg://other:secret@db-a:5432/orbit")
    assert one != two
    assert one == again  # the same database, whoever connects
    assert "secret" not in again and "db-a" not in one


def test_in_development_the_shared_secret_is_made_once_in_the_data_folder(
    tmp_path: Path,
) -> None:
    settings = Settings(_env_file=None, orbit_data_dir=tmp_path)  # type: ignore[call-arg]
    made = shared_state_secret(settings)
    assert len(made) >= 32
    assert shared_state_secret(settings) == made
    kept = tmp_path / "shared-state-secret"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


async def test_waiters_mint_as_soon_as_the_minting_replica_gives_up(
    make_settings: MakeSettings, redis_url: str, redis: Redis, world: World, tenant: Tenant
) -> None:
    """Another replica holds the mint lock, then gives up without publishing a token: this one
    signs at once instead of polling for the whole storage timeout."""
    export = await world.export(tenant)
    settings = make_settings(
        redis_url=redis_url, rate_limit_per_minute=0, storage_timeout_seconds=20
    )
    _, lock = names_for(settings, world, export)
    await redis.set(lock, "another replica", px=60_000)
    async with serve(settings) as client:
        request = asyncio.create_task(
            client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
        )
        # Waiting, as long as the lock is held.
        done, _ = await asyncio.wait({request}, timeout=0.3)
        assert not done
        await redis.delete(lock)
        gave_up_at = time.monotonic()
        answer = await asyncio.wait_for(request, timeout=10)
    assert answer.status_code == 200
    assert time.monotonic() - gave_up_at < 5, "it waited on after the lock was gone"
