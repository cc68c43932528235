"""Postgres ending the service's sessions while requests are in flight (pg_terminate_backend, a
restart, a failover, PgBouncer's idle timeout): a statement whose connection died is tried once
more on a fresh connection within the request's deadline, and no client ever gets a 500."""

from __future__ import annotations

import asyncio
import collections
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.app import MakeSettings, bearer, serve
from tests.support.world import Tenant, World

TERMINATE_NEW_SESSIONS = text(
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE application_name = 'orbit-exports' AND datname = current_database()"
    " AND backend_start > :since"
)


async def test_sessions_ended_mid_load_give_no_500_and_the_service_recovers(
    make_settings: MakeSettings, db: AsyncEngine, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    token = world.jwt(tenant.org)
    path = tenant.path(export["id"])
    statuses: collections.Counter[int] = collections.Counter()
    async with db.connect() as admin:
        since = (await admin.execute(text("SELECT now()"))).scalar_one()
        await admin.commit()
    async with serve(
        make_settings(db_pool_size=4, db_max_overflow=0, rate_limit_per_minute=0)
    ) as client:
        stop = asyncio.Event()

        async def caller() -> None:
            while not stop.is_set():
                response = await client.get(path, headers=bearer(token))
                statuses[response.status_code] += 1

        async def terminator() -> int:
            ended = 0
            async with db.connect() as admin:
                for _ in range(25):
                    await asyncio.sleep(0.08)
                    ended += (
                        await admin.execute(TERMINATE_NEW_SESSIONS, {"since": since})
                    ).scalar_one()
                    await admin.commit()
            stop.set()
            return ended

        callers = [asyncio.create_task(caller()) for _ in range(8)]
        ended = await terminator()
        await asyncio.gather(*callers)
        assert ended >= 10, "the test did not end enough sessions to mean anything"
        assert 500 not in statuses, statuses
        assert set(statuses) <= {409, 503}, statuses
        # Most requests got their answer: the retry on a fresh connection, not a 503.
        assert statuses[409] > 4 * statuses[503], statuses
        # Afterwards every request succeeds at once, without a restart.
        for _ in range(10):
            assert (await client.get(path, headers=bearer(token))).status_code == 409
        # An unknown export still reads as a plain 404.
        assert (
            await client.get(tenant.path(uuid.uuid4()), headers=bearer(token))
        ).status_code == 404
