"""/readyz follows the replica's own state and is cheap: it pings the database at most once a
second whatever the request rate (one ping in flight, shared), a replica that never reached
the database is never ready, and a shared database outage makes it not ready only once it has
lasted longer than READINESS_DEPENDENCY_GRACE_SECONDS (meanwhile requests get the service's own
503 DATABASE_UNAVAILABLE with Retry-After, not a balancer's page)."""

from __future__ import annotations

import asyncio
import time

import httpx
from orbit_dev.faults import TcpProxy

from app.api.health import Readiness
from app.main import create_app
from tests.support.app import MakeSettings, bearer, serve
from tests.support.world import Tenant, World


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Database:
    """A ping that answers (or not), counted; `gate` holds pings in flight until set."""

    def __init__(self) -> None:
        self.up = True
        self.pings = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def ping(self) -> None:
        self.pings += 1
        await self.gate.wait()
        if not self.up:
            raise ConnectionError


async def test_the_database_is_pinged_at_most_once_per_interval_however_often_asked() -> None:
    clock, database = Clock(), Database()
    readiness = Readiness(database.ping, storage_configured=True, grace=30, monotonic=clock)
    database.gate.clear()
    asking = [asyncio.ensure_future(readiness.database_state()) for _ in range(500)]
    await asyncio.sleep(0)
    database.gate.set()
    assert set(await asyncio.gather(*asking)) == {"ok"}
    assert database.pings == 1  # one in flight, shared by all 500
    for _ in range(1000):
        assert await readiness.database_state() == "ok"
    assert database.pings == 1  # kept for the interval
    clock.now += 1.0
    assert await readiness.database_state() == "ok"
    assert database.pings == 2


async def test_a_replica_that_never_reached_the_database_is_never_ready() -> None:
    clock, database = Clock(), Database()
    database.up = False
    readiness = Readiness(database.ping, storage_configured=True, grace=30, monotonic=clock)
    for _ in range(5):
        assert await readiness.database_state() == "unavailable"
        clock.now += 10  # well within the grace: it does not apply before the first contact


async def test_an_outage_counts_only_once_it_outlasts_the_grace() -> None:
    clock, database = Clock(), Database()
    readiness = Readiness(database.ping, storage_configured=True, grace=30, monotonic=clock)
    assert await readiness.database_state() == "ok"
    database.up = False
    clock.now += 1
    assert await readiness.database_state() == "degraded"
    clock.now += 30
    assert await readiness.database_state() == "degraded"
    clock.now += 1
    assert await readiness.database_state() == "unavailable"
    database.up = True
    clock.now += 1
    assert await readiness.database_state() == "ok"
    # A new outage starts its own grace.
    database.up = False
    clock.now += 1
    assert await readiness.database_state() == "degraded"


async def test_readyz_pings_postgres_at_most_once_a_second_under_load(
    make_settings: MakeSettings,
) -> None:
    app = create_app(make_settings())
    pings: list[str] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        database = app.state.export_backends.database
        database.on_statement = lambda sql: pings.append(sql) if sql == "SELECT 1" else None
        started = time.monotonic()

        async def ask(n: int) -> None:
            for _ in range(n):
                assert (await client.get("/readyz")).status_code == 200

        await asyncio.gather(*(ask(50) for _ in range(20)))
        elapsed = time.monotonic() - started
    assert len(pings) <= elapsed + 1, (len(pings), elapsed)


async def test_through_a_short_database_outage_the_replica_stays_in_the_balancer(
    make_settings: MakeSettings, database_url: str, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    proxy = await TcpProxy(database_url).start()
    try:
        within_grace = make_settings(
            database_url=proxy.url(), readiness_dependency_grace_seconds=30
        )
        no_grace = make_settings(database_url=proxy.url(), readiness_dependency_grace_seconds=0)
        headers = bearer(world.jwt(tenant.org))
        async with serve(within_grace) as patient, serve(no_grace) as strict:
            for client in (patient, strict):
                assert (await client.get("/readyz")).status_code == 200
            proxy.set_mode("refuse")
            proxy.drop_all()
            outage_started = time.monotonic()
            for client in (patient, strict):
                failed = await client.get(tenant.path(export["id"]), headers=headers)
                assert failed.status_code == 503
                assert failed.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
                assert failed.headers["Retry-After"]
            # Each sees the outage once its last ping is a second old; the patient one stays
            # ready meanwhile, the strict one leaves at once.
            while True:
                seen = await patient.get("/readyz")
                assert seen.status_code == 200
                if seen.json()["data"]["checks"]["database"] == "degraded":
                    break
                assert time.monotonic() - outage_started < 5, "the outage was never seen"
                await asyncio.sleep(0.05)
            while (refused := await strict.get("/readyz")).status_code == 200:
                assert time.monotonic() - outage_started < 5, "the outage was never seen"
                await asyncio.sleep(0.05)
            assert refused.json()["error"]["details"]["database"] == "unavailable"
    finally:
        await proxy.stop()


async def test_the_database_reached_by_a_request_counts_as_reached() -> None:
    """The pool opened for requests before /readyz was first asked: an outage then gets the
    grace like any other."""
    clock, database = Clock(), Database()
    database.up = False
    readiness = Readiness(
        database.ping, storage_configured=True, grace=30, monotonic=clock, reached=lambda: True
    )
    assert await readiness.database_state() == "degraded"
