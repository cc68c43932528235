"""A revoked, deleted or expired key costs no more than a made-up one: replaying it 1,500 times
makes at most 150 database statements (one, in fact: the database's refusal is remembered).
And the notification channel is input like any other: a payload that is not a key hash is
ignored and counted, and the known set stays bounded whatever the channel carries."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, text, update

from app.auth.api_keys import FIND_ACTIVE_KEY_SQL, CachedApiKeys, hash_key
from app.db.tables import api_keys
from app.main import create_app
from tests.support.app import MakeSettings, key_headers
from tests.support.assertions import assert_unauthorized
from tests.support.world import Tenant, World


@asynccontextmanager
async def counted(settings: object) -> AsyncIterator[tuple[httpx.AsyncClient, list[str], object]]:
    """The app, a client, the statements it sends to Postgres from now on, and the app."""
    app = create_app(settings)  # type: ignore[arg-type]
    statements: list[str] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        app.state.export_backends.database.on_statement = statements.append
        yield client, statements, app


async def revoke(world: World, key: str) -> None:
    async with world.db.begin() as conn:
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.key_hash == hash_key(key))
            .values(revoked_at=text("now()"))
        )


async def remove(world: World, key: str) -> None:
    async with world.db.begin() as conn:
        await conn.execute(delete(api_keys).where(api_keys.c.key_hash == hash_key(key)))


async def expire(world: World, key: str) -> None:
    async with world.db.begin() as conn:
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.key_hash == hash_key(key))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


async def wait_until_refused(client: httpx.AsyncClient, path: str, key: str) -> None:
    """The change is announced within a second; until then the cached key may still work."""
    deadline = time.monotonic() + 5
    while (await client.get(path, headers=key_headers(key))).status_code != 401:
        assert time.monotonic() < deadline, "the change never reached the process"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("change", [revoke, remove, expire], ids=["revoked", "deleted", "expired"])
async def test_replaying_a_dead_key_costs_no_more_than_a_made_up_one(
    make_settings: MakeSettings,
    world: World,
    tenant: Tenant,
    change: Callable[[World, str], Awaitable[None]],
) -> None:
    export = await world.export(tenant, status="processing")
    path = tenant.path(export["id"])
    key = await world.api_key(tenant.org)
    settings = make_settings(rate_limit_per_minute=0, api_key_cache_seconds=60)
    async with counted(settings) as (client, statements, _):
        assert (await client.get(path, headers=key_headers(key))).status_code == 409
        await change(world, key)
        await wait_until_refused(client, path, key)
        statements.clear()

        async def replay(n: int) -> None:
            for _ in range(n):
                assert_unauthorized(await client.get(path, headers=key_headers(key)))

        await asyncio.gather(*(replay(100) for _ in range(15)))
        lookups = statements.count(FIND_ACTIVE_KEY_SQL)
        assert lookups <= 150, lookups
        assert lookups <= 1, lookups


async def test_a_key_restored_after_revocation_works_again(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    """The refusal is remembered only until the key changes again: the change is announced."""
    export = await world.export(tenant, status="processing")
    path = tenant.path(export["id"])
    key = await world.api_key(tenant.org)
    settings = make_settings(rate_limit_per_minute=0, api_key_cache_seconds=60)
    async with counted(settings) as (client, _, _):
        await revoke(world, key)
        await wait_until_refused(client, path, key)
        async with world.db.begin() as conn:
            await conn.execute(
                update(api_keys).where(api_keys.c.key_hash == hash_key(key)).values(revoked_at=None)
            )
        deadline = time.monotonic() + 5
        while (await client.get(path, headers=key_headers(key))).status_code != 409:
            assert time.monotonic() < deadline, "the restored key stayed refused"
            await asyncio.sleep(0.01)


async def test_notifications_that_are_not_key_hashes_are_ignored_and_counted(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    from prometheus_client import REGISTRY

    def ignored() -> float:
        return REGISTRY.get_sample_value("orbit_key_change_notifications_ignored_total") or 0.0

    before = ignored()
    hostile = [
        "",
        "x" * 64,
        "ABCDEF" * 11,
        "0" * 63,
        "0" * 65,
        "not a hash; DROP TABLE",
        "\u00e9" * 64,
    ]
    async with counted(make_settings(rate_limit_per_minute=0)) as (client, _, _):
        async with world.db.begin() as conn:
            for payload in hostile:
                await conn.execute(
                    text("SELECT pg_notify('orbit_api_key_changes', :p)"), {"p": payload}
                )
        deadline = time.monotonic() + 5
        while ignored() < before + len(hostile):
            assert time.monotonic() < deadline, "the notifications never arrived"
            await asyncio.sleep(0.01)
        # The service goes on answering, and valid notifications still work.
        path = tenant.path(uuid.uuid4())
        assert_unauthorized(await client.get(path, headers=key_headers("sk_" + "x" * 43)))


def test_the_known_set_stays_bounded_whatever_the_channel_carries() -> None:
    """Past its bound the set is dropped, marked incomplete (every key is looked up) and
    reloaded from the table."""
    cache = CachedApiKeys(10, db=None, max_known=100)  # type: ignore[arg-type]
    cache._known_complete = True  # as after a load
    for _ in range(1000):
        cache.forget(secrets.token_hex(32))
        assert len(cache._known) <= 100
    assert not cache._known_complete
    assert cache._reload.is_set()
