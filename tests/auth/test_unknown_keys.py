"""Made-up API keys cost no database work: each process knows the hashes of every active key
(loaded once it listens for key changes, kept complete by the announcements), so 1,500 random
well-formed keys make at most a small budget of lookups, while real users are served as
usual. A key created after start works at once on every replica; while announcements may be
missed (the listening connection down), every key is looked up again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from sqlalchemy import text

from app.auth.api_keys import FIND_ACTIVE_KEY_SQL, generate_key
from app.main import create_app
from tests.support.app import MakeSettings, key_headers
from tests.support.assertions import assert_unauthorized
from tests.support.world import Tenant, World


@asynccontextmanager
async def counted(settings: object) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """The app, a client, and the statements it sends to Postgres from now on."""
    app = create_app(settings)  # type: ignore[arg-type]
    statements: list[str] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        app.state.export_backends.database.on_statement = statements.append
        yield client, statements


def key_lookups(statements: list[str]) -> int:
    return statements.count(FIND_ACTIVE_KEY_SQL)


async def test_random_keys_cost_at_most_a_small_budget_of_lookups(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    real_key = await world.api_key(tenant.org)
    path = tenant.path(export["id"])
    async with counted(make_settings(rate_limit_per_minute=0)) as (client, statements):
        assert (await client.get(path, headers=key_headers(real_key))).status_code == 409
        statements.clear()
        real_statuses: list[int] = []

        async def attacker(n: int) -> None:
            for _ in range(n):
                assert_unauthorized(await client.get(path, headers=key_headers(generate_key())))

        async def real_user() -> None:
            for _ in range(50):
                response = await client.get(path, headers=key_headers(real_key))
                real_statuses.append(response.status_code)

        await asyncio.gather(*(attacker(100) for _ in range(15)), real_user())
        assert set(real_statuses) == {409}
        garbage_lookups = key_lookups(statements)
        assert garbage_lookups <= 150, garbage_lookups
        # The budget: a burst of 20, then 5 a second.
        assert garbage_lookups <= 20 + 5 * 60, garbage_lookups
        # Real users' lookups are the export's, one per request.
        assert sum("intent_audience_exports" in s for s in statements) == 50


async def test_a_key_created_after_start_works_at_once_on_every_replica(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    path = tenant.path(export["id"])
    settings = make_settings(rate_limit_per_minute=0)
    async with counted(settings) as (first, _), counted(settings) as (second, _):
        # Spend the budget for unknown keys, so only the announcement can let the key in.
        for client in (first, second):
            for _ in range(40):
                await client.get(path, headers=key_headers(generate_key()))
        key = await world.api_key(tenant.org)
        started = time.monotonic()
        for client in (first, second):
            while (await client.get(path, headers=key_headers(key))).status_code != 409:
                assert time.monotonic() - started < 1.0, "the new key was not announced"
                await asyncio.sleep(0.01)


async def test_while_not_listening_every_key_is_looked_up(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    path = tenant.path(export_id="00000000-0000-4000-8000-000000000000")
    async with counted(make_settings(rate_limit_per_minute=0)) as (client, statements):
        for _ in range(40):
            await client.get(path, headers=key_headers(generate_key()))
        spent = key_lookups(statements)
        async with world.db.begin() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'orbit-exports-listen'"
                    " AND datname = current_database()"
                )
            )
        started = time.monotonic()
        # Once the loss is noticed, made-up keys reach the database again.
        while key_lookups(statements) < spent + 5:
            assert time.monotonic() - started < 2.0, "keys were still refused unseen"
            assert_unauthorized(await client.get(path, headers=key_headers(generate_key())))
            await asyncio.sleep(0.01)
