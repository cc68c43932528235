"""Behind PgBouncer in transaction pooling mode (several replicas sharing one Postgres), with
DB_PREPARED_STATEMENTS=false: consecutive statements land on different server sessions, and
every one still works, for the service and for its commands."""

from __future__ import annotations

import asyncio
import subprocess
import time

from tests.fixtures.pgbouncer import PgBouncer
from tests.support.app import MakeSettings, key_headers, serve
from tests.support.constants import CLI
from tests.support.world import Tenant, World


async def test_the_service_answers_through_pgbouncer_in_transaction_mode(
    make_settings: MakeSettings, pgbouncer_url: str, world: World, tenant: Tenant
) -> None:
    exports = [await world.export(tenant, status="processing") for _ in range(3)]
    key = await world.api_key(tenant.org)
    settings = make_settings(
        database_url=pgbouncer_url,
        db_prepared_statements=False,
        db_pool_size=6,
        api_key_cache_seconds=0,
        rate_limit_per_minute=0,
    )
    async with serve(settings) as client:
        # 6 client connections over PgBouncer's 2 server connections, 120 requests: the
        # statements of one client connection are spread over both server sessions.
        for _ in range(20):
            responses = await asyncio.gather(
                *(
                    client.get(tenant.path(export["id"]), headers=key_headers(key))
                    for export in exports * 2
                )
            )
            assert [r.status_code for r in responses] == [409] * 6
        assert (await client.get("/readyz")).status_code == 200


def test_commands_work_through_pgbouncer(
    cli_env: dict[str, str], pgbouncer_url: str, tenant: Tenant
) -> None:
    env = cli_env | {"DATABASE_URL": pgbouncer_url, "DB_PREPARED_STATEMENTS": "false"}
    for _ in range(3):
        created = subprocess.run(
            [CLI, "api-keys", "create", "--org", str(tenant.org)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
    listing = subprocess.run(
        [CLI, "api-keys", "list", "--org", str(tenant.org)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert listing.stdout.count("active") == 3


async def test_a_pgbouncer_restart_is_the_services_own_503_then_200_within_3_s(
    make_settings: MakeSettings, own_pgbouncer: PgBouncer, world: World, tenant: Tenant
) -> None:
    """While PgBouncer is down: 503 DATABASE_UNAVAILABLE with Retry-After (never a 500), and
    /readyz stays 200 (a shared outage, within its grace); 200 again within 3 s of its return."""
    export = await world.export(tenant, status="processing")
    key = await world.api_key(tenant.org)
    settings = make_settings(
        database_url=own_pgbouncer.url, db_prepared_statements=False, rate_limit_per_minute=0
    )
    path = tenant.path(export["id"])
    async with serve(settings) as client:
        assert (await client.get(path, headers=key_headers(key))).status_code == 409
        own_pgbouncer.kill()
        down = await client.get(path, headers=key_headers(key))
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
        assert int(down.headers["Retry-After"]) > 0
        assert (await client.get("/readyz")).status_code == 200
        await asyncio.to_thread(own_pgbouncer.start)
        back = time.monotonic()
        while (await client.get(path, headers=key_headers(key))).status_code != 409:
            assert time.monotonic() - back < 3, "not back within 3 s of PgBouncer's return"
            await asyncio.sleep(0.05)
