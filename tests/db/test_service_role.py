"""Least privilege: the service connects as a role that can only read its two tables, append
to the audit (and LISTEN); `orbit-exports migrate`, run as the owner with DB_SERVICE_ROLE,
grants exactly that and
puts the statement timeout in the role's own settings, where PgBouncer cannot drop it (it
drops the startup parameter: `ignore_startup_parameters`)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from app.db.connection import asyncpg_dsn
from tests.support.app import MakeSettings, key_headers, serve
from tests.support.constants import CLI
from tests.support.world import Tenant, World


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role, password=None).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def granted(cli_env: dict[str, str], service_role: str) -> str:
    """migrate, as the owner, with DB_SERVICE_ROLE: the grants and the role's timeout."""
    result = subprocess.run(
        [CLI, "migrate"],
        env=cli_env | {"DB_SERVICE_ROLE": service_role, "DB_STATEMENT_TIMEOUT_MS": "1000"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"granted {service_role}" in result.stdout
    return service_role


async def test_the_service_serves_revokes_and_is_ready_as_a_read_only_role(
    make_settings: MakeSettings,
    database_url: str,
    granted: str,
    cli_env: dict[str, str],
    world: World,
    tenant: Tenant,
) -> None:
    export = await world.export(tenant)
    key = await world.api_key(tenant.org)
    settings = make_settings(database_url=as_role(database_url, granted))
    async with serve(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        path = tenant.path(export["id"])
        assert (await client.get(path, headers=key_headers(key))).status_code == 200
        key_id = await world_key_id(world, key)
        revoked = await asyncio.to_thread(
            subprocess.run,
            [CLI, "api-keys", "revoke", key_id],
            env=cli_env,
            capture_output=True,
            timeout=60,
        )
        assert revoked.returncode == 0
        deadline = time.monotonic() + 5
        while (await client.get(path, headers=key_headers(key))).status_code != 401:
            assert time.monotonic() < deadline, "the revocation never reached the service"
            await asyncio.sleep(0.02)


async def world_key_id(world: World, key: str) -> str:
    from sqlalchemy import select

    from app.auth.api_keys import hash_key
    from app.db.tables import api_keys

    async with world.db.connect() as conn:
        found = await conn.execute(
            select(api_keys.c.id).where(api_keys.c.key_hash == hash_key(key))
        )
        return str(found.scalar_one())


@pytest.mark.parametrize(
    "write",
    [
        "INSERT INTO intent_audience_exports (organization_id, audience_id, run_id, status)"
        " VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'processing')",
        "UPDATE api_keys SET revoked_at = NULL",
        "DELETE FROM api_keys",
        "INSERT INTO api_keys (organization_id, name, prefix, key_hash)"
        " VALUES (gen_random_uuid(), 'x', 'sk_x', 'x')",
        "CREATE TABLE smuggled (x int)",
        "TRUNCATE intent_audience_exports",
        # The audit is append-only for the service, and not readable by it.
        "UPDATE export_url_audit SET reused = true",
        "DELETE FROM export_url_audit",
        "SELECT count(*) FROM export_url_audit",
    ],
    ids=[
        "insert-export",
        "update-keys",
        "delete-keys",
        "insert-key",
        "create-table",
        "truncate",
        "update-audit",
        "delete-audit",
        "read-audit",
    ],
)
async def test_the_service_role_cannot_write(database_url: str, granted: str, write: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(as_role(database_url, granted)))
    try:
        assert await connection.fetchval("SELECT count(*) >= 0 FROM api_keys")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(write)
    finally:
        await connection.close()


async def test_the_statement_timeout_holds_through_pgbouncer(
    pgbouncer_url: str, granted: str
) -> None:
    """A statement past DB_STATEMENT_TIMEOUT_MS is cancelled by Postgres itself, through a
    PgBouncer that drops the timeout sent at connection start."""
    owner = await asyncpg.connect(
        asyncpg_dsn(pgbouncer_url),
        statement_cache_size=0,
        server_settings={"statement_timeout": "1000"},
    )
    service = await asyncpg.connect(
        asyncpg_dsn(as_role(pgbouncer_url, granted)), statement_cache_size=0
    )
    try:
        # What the startup parameter alone gives behind PgBouncer: nothing.
        assert await owner.fetchval("SHOW statement_timeout") == "0"
        assert await service.fetchval("SHOW statement_timeout") == "1s"
        started = time.monotonic()
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            await service.fetchval(f"SELECT pg_sleep(4), '{uuid.uuid4()}'")
        assert time.monotonic() - started < 3
    finally:
        await owner.close()
        await service.close()
