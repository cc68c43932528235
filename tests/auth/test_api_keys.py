"""X-API-Key authentication, header rules and the 401 envelope."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.auth.api_keys import (
    FIND_ACTIVE_KEY_SQL,
    FIND_ACTIVE_KEYS_SQL,
    CachedApiKeys,
    generate_key,
    hash_key,
    revoke_api_key,
)
from app.db.tables import api_keys
from tests.support.app import MakeSettings, bearer, key_headers, serve
from tests.support.database import database
from tests.support.waiting import wait_until
from tests.support.world import Tenant, World


def assert_unauthorized(response: httpx.Response, *, mentions: str | None = None) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "UNAUTHORIZED"
    if mentions:
        assert mentions in error["message"]


async def test_no_credentials_is_401(client: httpx.AsyncClient, tenant: Tenant) -> None:
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4())))


async def test_no_credentials_is_401_even_with_malformed_path(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/intent/audiences/nope/runs/1/exports/%00")
    assert_unauthorized(response)


async def test_unknown_key_is_401(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get(tenant.path(uuid.uuid4()), headers=key_headers(generate_key()))
    assert_unauthorized(response)


async def test_key_without_sk_prefix_is_401(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    key = await world.api_key(tenant.org)
    response = await client.get(tenant.path(uuid.uuid4()), headers=key_headers(key[3:]))
    assert_unauthorized(response)


async def _revoke(world: World, key: str) -> None:
    async with world.db.begin() as conn:
        key_id = (
            await conn.execute(select(api_keys.c.id).where(api_keys.c.key_hash == hash_key(key)))
        ).scalar_one()
        await revoke_api_key(conn, key_id)


async def test_revoked_key_is_401_at_once_without_the_key_cache(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    key = await world.api_key(tenant.org)
    async with serve(make_settings(api_key_cache_seconds=0)) as client:
        path = tenant.path(export["id"])
        assert (await client.get(path, headers=key_headers(key))).status_code == 409
        await _revoke(world, key)
        assert_unauthorized(await client.get(path, headers=key_headers(key)))


async def test_a_remembered_key_is_trusted_at_most_the_cache_lifetime(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    """The bound the README gives for revocation: API_KEY_CACHE_SECONDS after the database last
    confirmed the key (here on an injected clock, so the test does not race one)."""
    key = await world.api_key(tenant.org)
    now = [500.0]
    async with database(make_settings()) as db:
        keys = CachedApiKeys(10, db, monotonic=lambda: now[0])
        assert await keys.owner(hash_key(key)) is not None
        await _revoke(world, key)
        now[0] += 9.9
        assert await keys.owner(hash_key(key)) is not None  # remembered
        now[0] += 0.1
        assert await keys.owner(hash_key(key)) is None  # asked again: revoked


async def test_a_recheck_forgets_revoked_keys_and_renews_the_others(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    kept, revoked = await world.api_key(tenant.org), await world.api_key(tenant.org)
    now = [500.0]
    async with database(make_settings()) as db:
        keys = CachedApiKeys(10, db, monotonic=lambda: now[0])
        for key in (kept, revoked):
            assert await keys.owner(hash_key(key)) is not None
        await _revoke(world, revoked)
        now[0] += 5
        await keys.recheck()
        now[0] += 9.9  # 14.9 s after the first lookup, 9.9 s after the recheck
        assert await keys.owner(hash_key(kept)) is not None
        assert await keys.owner(hash_key(revoked)) is None


async def test_a_remembered_key_is_never_trusted_past_its_own_expiry(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    """The cache lifetime is cut to the key's expiry: with 5 s of the key's life left (by the
    injected wall clock), a revocation is seen 5 s later although the cache would keep 60."""
    expires_at = datetime.now(UTC) + timedelta(hours=1)
    key = await world.api_key(tenant.org, expires_at=expires_at)
    now = [500.0]
    async with database(make_settings()) as db:
        keys = CachedApiKeys(
            60, db, clock=lambda: expires_at - timedelta(seconds=5), monotonic=lambda: now[0]
        )
        assert await keys.owner(hash_key(key)) is not None
        await _revoke(world, key)
        now[0] += 4.9
        assert await keys.owner(hash_key(key)) is not None
        now[0] += 0.1
        assert await keys.owner(hash_key(key)) is None


async def test_expired_key_is_401(client: httpx.AsyncClient, world: World, tenant: Tenant) -> None:
    key = await world.api_key(tenant.org, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=key_headers(key)))


async def test_key_with_future_expiry_works(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    key = await world.api_key(tenant.org, expires_at=datetime.now(UTC) + timedelta(days=1))
    response = await client.get(tenant.path(uuid.uuid4()), headers=key_headers(key))
    assert response.status_code == 404


async def test_keys_are_stored_only_as_hashes(world: World, tenant: Tenant) -> None:
    key = await world.api_key(tenant.org)
    async with world.db.connect() as conn:
        row = (
            await conn.execute(select(api_keys).where(api_keys.c.organization_id == tenant.org))
        ).one()
    assert key not in [str(value) for value in row]
    assert row.key_hash == hash_key(key)
    assert key.startswith(row.prefix) and len(row.prefix) < len(key) // 3


def test_keys_carry_at_least_32_bytes_of_entropy() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    # 43 URL-safe base64 characters = 256 bits.
    assert all(k.startswith("sk_") and len(k) == 3 + 43 for k in keys)


async def test_api_key_sent_as_bearer_is_401_pointing_to_x_api_key(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    key = await world.api_key(tenant.org)
    response = await client.get(tenant.path(uuid.uuid4()), headers=bearer(key))
    assert_unauthorized(response, mentions="X-API-Key")
    assert key not in response.text


async def test_both_credentials_at_once_is_401(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    key = await world.api_key(tenant.org)
    headers = {**key_headers(key), **bearer(world.jwt(tenant.org))}
    assert_unauthorized(
        await client.get(tenant.path(uuid.uuid4()), headers=headers), mentions="not both"
    )


async def test_repeated_api_key_header_is_401(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    key = await world.api_key(tenant.org)
    headers = [("X-API-Key", key), ("X-API-Key", key)]
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=headers))


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc", "bearer not-a-jwt", "Bearer a.b.c"],
)
async def test_malformed_authorization_is_401(
    client: httpx.AsyncClient, tenant: Tenant, authorization: str
) -> None:
    response = await client.get(tenant.path(uuid.uuid4()), headers={"Authorization": authorization})
    assert_unauthorized(response)


async def test_oversized_credentials_are_401(client: httpx.AsyncClient, tenant: Tenant) -> None:
    huge = "sk_" + "a" * 12_000  # within MAX_HEADER_BYTES (16 kB); beyond it, 431
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=key_headers(huge)))
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=bearer("e" * 12_000)))


async def test_non_ascii_api_key_is_401(client: httpx.AsyncClient, tenant: Tenant) -> None:
    headers = [(b"X-API-Key", "sk_é€".encode())]
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=headers))


async def test_steady_api_key_traffic_costs_one_statement_per_request(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    """Every statement the service sends goes through `Database`, which reports it."""
    from app.main import create_app
    from tests.support.contract import validate_response_hook

    export = await world.export(tenant, status="processing")
    key = await world.api_key(tenant.org)
    app = create_app(make_settings())
    statements: list[str] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://orbit.test",
            event_hooks={"response": [validate_response_hook]},
        ) as client,
    ):
        app.state.export_backends.database.on_statement = statements.append
        path = tenant.path(export["id"])
        assert (await client.get(path, headers=key_headers(key))).status_code == 409
        assert len([s for s in statements if "api_keys" in s]) == 1
        statements.clear()
        for _ in range(5):
            assert (await client.get(path, headers=key_headers(key))).status_code == 409
        assert len(statements) == 5
        assert all("intent_audience_exports" in s for s in statements)


class CountedRechecks(CachedApiKeys):
    """The cache, counting the rechecks it has begun and finished."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.begun = self.rechecks = 0

    async def recheck(self) -> None:
        self.begun += 1
        await super().recheck()
        self.rechecks += 1


async def test_remembered_keys_are_rechecked_together_not_per_request(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    """Known keys are checked again in one statement every half cache lifetime, so requests
    with them never wait for a key lookup; a key revoked meanwhile is forgotten by the next
    check. The recheck loop runs for real; the cache's clock moves half a lifetime after each
    recheck it finishes, so after the second step every key would have run out without them."""
    keys = [await world.api_key(tenant.org) for _ in range(3)]
    now = [500.0]
    statements: list[str] = []
    async with database(make_settings()) as db:
        db.on_statement = statements.append
        cached = CountedRechecks(0.2, db, monotonic=lambda: now[0])
        for key in keys:
            assert await cached.owner(hash_key(key)) is not None
        assert statements.count(FIND_ACTIVE_KEY_SQL) == 3
        await _revoke(world, keys[0])
        loop = asyncio.create_task(cached.run())
        try:
            for step in range(6):
                done = cached.rechecks
                await wait_until(
                    lambda done=done: cached.rechecks > done,
                    within=5,
                    what="the loop finished a recheck",
                )
                if step == 0:
                    # Forgotten by that check, the clock not having moved: asked again, refused.
                    assert await cached.owner(hash_key(keys[0])) is None
                now[0] += 0.1
                for key in keys[1:]:
                    assert await cached.owner(hash_key(key)) is not None
        finally:
            loop.cancel()
        # Only the first lookups of each key (and the revoked one's) asked for one key; the
        # rest came from the rechecks, one statement each.
        assert statements.count(FIND_ACTIVE_KEY_SQL) == 4
        assert statements.count(FIND_ACTIVE_KEYS_SQL) == cached.begun
