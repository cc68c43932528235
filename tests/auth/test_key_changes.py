"""Revocation reaches every replica within a second: a change to an api_keys row is announced
by Postgres (a trigger, NOTIFY) and every process forgets the key at once, even with a key
cache of an hour; a lost listening connection is re-established."""

from __future__ import annotations

import asyncio
import time

import httpx
from sqlalchemy import text

from app.auth.api_keys import hash_key
from tests.support.app import MakeSettings, key_headers, serve
from tests.support.waiting import wait_until
from tests.support.world import Tenant, World

EVERY_REPLICA_WITHIN = 1.0
REVOKE = text("UPDATE api_keys SET revoked_at = now() WHERE key_hash = :h")


async def statuses_until_refused(
    clients: list[httpx.AsyncClient], path: str, key: str, within: float
) -> float:
    """Seconds until every client answers 401 for the key; fails past `within`."""
    started = time.monotonic()
    while True:
        statuses = [(await c.get(path, headers=key_headers(key))).status_code for c in clients]
        if set(statuses) == {401}:
            return time.monotonic() - started
        assert time.monotonic() - started < within, statuses
        await asyncio.sleep(0.02)


async def listening_sessions(world: World) -> set[int]:
    """The sessions of this database that have subscribed to key changes: the service's
    listening connection once its LISTEN has run."""
    async with world.db.begin() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = 'orbit-exports-listen'"
                " AND datname = current_database() AND query ILIKE 'LISTEN %'"
            )
        )
        return {row.pid for row in rows}


async def test_a_revoked_key_stops_working_on_every_replica_within_a_second(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    key = await world.api_key(tenant.org)
    path = tenant.path(export["id"])
    settings = make_settings(api_key_cache_seconds=3600)
    async with serve(settings) as first, serve(settings) as second:
        for client in (first, second):
            assert (await client.get(path, headers=key_headers(key))).status_code == 409
        async with world.db.begin() as conn:
            # Any writer, not only our command: the trigger announces it.
            await conn.execute(
                text("UPDATE api_keys SET revoked_at = now() WHERE key_hash = :h"),
                {"h": hash_key(key)},
            )
        await statuses_until_refused([first, second], path, key, EVERY_REPLICA_WITHIN)


async def test_revocations_still_arrive_after_the_listening_connection_was_lost(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    key = await world.api_key(tenant.org)
    path = tenant.path(export["id"])
    async with serve(make_settings(api_key_cache_seconds=3600)) as client:
        assert (await client.get(path, headers=key_headers(key))).status_code == 409
        lost = await listening_sessions(world)
        assert lost
        async with world.db.begin() as conn:
            await conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:p AS int[])) AS pid"),
                {"p": sorted(lost)},
            )

        async def listening_again() -> bool:
            # Every app of this process listens on a session of its own (the suite's shared
            # app too): each that was cut has to be back, whichever is ours.
            return len(await listening_sessions(world) - lost) >= len(lost)

        await wait_until(
            listening_again, within=5, what="new sessions listen for key changes in place"
        )
        assert (await client.get(path, headers=key_headers(key))).status_code == 409
        async with world.db.begin() as conn:
            await conn.execute(
                text("UPDATE api_keys SET revoked_at = now() WHERE key_hash = :h"),
                {"h": hash_key(key)},
            )
        await statuses_until_refused([client], path, key, EVERY_REPLICA_WITHIN)
