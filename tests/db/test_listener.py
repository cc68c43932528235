"""The listening connection proves itself: a connection that goes silent (no FIN, no RST: a NAT's
idle timeout) is noticed within LISTEN_HEARTBEAT_SECONDS by the probe it sends itself, replaced,
and revocations reach the process again within the heartbeat and a second; a listen URL that
delivers nothing (a transaction-mode PgBouncer) is named in one warning, and revocation then
rests on API_KEY_CACHE_SECONDS. TCP keepalives are on for every connection to Postgres."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from orbit_dev.faults import TcpProxy
from sqlalchemy import text

from app.auth.api_keys import hash_key
from app.core.settings import Settings
from app.db.asyncpg_compat import WRITTEN_FOR, Keepalive, enable_keepalive, installed_asyncpg_line
from app.db.connection import asyncpg_dsn
from app.db.database import Database
from app.main import create_app
from tests.support.app import MakeSettings, key_headers
from tests.support.world import Tenant, World

HEARTBEAT = 1.0


@asynccontextmanager
async def app_listening_through(
    settings: Settings,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        yield client


async def revoke(world: World, key: str) -> None:
    async with world.db.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE key_hash = :h"), {"h": hash_key(key)}
        )


async def test_a_silently_lost_listening_connection_is_replaced_within_the_heartbeat(
    make_settings: MakeSettings, database_url: str, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    path = tenant.path(export["id"])
    key = await world.api_key(tenant.org)
    proxy = await TcpProxy(database_url).start()
    try:
        settings = make_settings(
            database_listen_url=proxy.url(),
            listen_heartbeat_seconds=HEARTBEAT,
            # Only the announcement can take the key away quickly.
            api_key_cache_seconds=120,
            rate_limit_per_minute=0,
        )
        async with app_listening_through(settings) as client:
            assert (await client.get(path, headers=key_headers(key))).status_code == 409
            proxy.silence_existing()
            silenced = time.monotonic()
            await revoke(world, key)
            while (await client.get(path, headers=key_headers(key))).status_code != 401:
                assert time.monotonic() - silenced < HEARTBEAT + 1, "the revocation never came"
                await asyncio.sleep(0.02)
    finally:
        await proxy.stop()


async def test_a_listen_url_that_delivers_nothing_is_named_in_one_warning(
    make_settings: MakeSettings,
    pgbouncer_url: str,
    world: World,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through PgBouncer in transaction mode LISTEN succeeds and hears nothing."""
    export = await world.export(tenant, status="processing")
    key = await world.api_key(tenant.org)
    settings = make_settings(
        database_listen_url=pgbouncer_url, listen_heartbeat_seconds=0.4, rate_limit_per_minute=0
    )
    with caplog.at_level(logging.WARNING, logger="app.db"):
        async with app_listening_through(settings) as client:
            deadline = time.monotonic() + 5
            while not [r for r in caplog.records if "delivers no notifications" in r.getMessage()]:
                assert time.monotonic() < deadline, "no warning about the listen URL"
                await asyncio.sleep(0.05)
            # The service serves on; keys are looked up in the database meanwhile.
            answer = await client.get(tenant.path(export["id"]), headers=key_headers(key))
            assert answer.status_code == 409
    warnings = [
        r.getMessage() for r in caplog.records if "delivers no notifications" in r.getMessage()
    ]
    assert len(warnings) == 1 and "DATABASE_LISTEN_URL" in warnings[0]
    assert "API_KEY_CACHE_SECONDS" in warnings[0]


def test_the_asyncpg_line_is_the_one_the_private_use_was_read_from() -> None:
    assert installed_asyncpg_line() == WRITTEN_FOR, (
        "asyncpg moved: check app/db/asyncpg_compat.py against it, then update WRITTEN_FOR"
    )


async def test_keepalives_are_on_for_every_connection_to_postgres(
    make_settings: MakeSettings, database_url: str
) -> None:
    """Over TCP (through a proxy, as the embedded Postgres listens on a Unix socket)."""
    proxy = await TcpProxy(database_url).start()
    settings = make_settings(
        database_url=proxy.url(),
        db_tcp_keepalive_idle_seconds=7,
        db_tcp_keepalive_interval_seconds=2,
        db_tcp_keepalive_count=4,
        db_tcp_user_timeout_seconds=9,
    )
    db = Database(settings, proxy.url())
    try:
        await db.ping(5)
        assert db._pool is not None
        async with db._pool.acquire() as pooled:
            sock = pooled._con._transport.get_extra_info("socket")
            assert_keepalive(sock, idle=7, interval=2, count=4, user_timeout_ms=9000)
        listening = await asyncpg.connect(asyncpg_dsn(proxy.url()))
        try:
            enable_keepalive(listening, Keepalive(idle=3, interval=1, count=2, user_timeout=4))
            sock = listening._transport.get_extra_info("socket")
            assert_keepalive(sock, idle=3, interval=1, count=2, user_timeout_ms=4000)
        finally:
            await listening.close()
    finally:
        await db.close()
        await proxy.stop()


def assert_keepalive(
    sock: socket.socket, *, idle: int, interval: int, count: int, user_timeout_ms: int
) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == count
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == user_timeout_ms
