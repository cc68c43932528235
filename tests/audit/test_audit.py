"""The audit of every download URL handed out: the records of an organization are exactly the
URLs handed out to it, across three replicas, through a burst ended at once by SIGTERM and a
Postgres outage in the middle; no record holds a token or a key; another organization's records
never appear; `orbit-exports audit list` and `prune` answer a security team."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from orbit_dev.faults import TcpProxy
from sqlalchemy import func, insert, select

from app.audit.log import COLUMNS, AuditLog, AuditRecord, row_of
from app.core.principal import Principal
from app.db.database import Database
from app.db.tables import export_url_audit
from app.main import create_app
from tests.support.app import MakeSettings, bearer, key_headers, serve
from tests.support.constants import CLI
from tests.support.processes import SERVER_PIDS, server_process
from tests.support.world import Tenant, World

CONTAINS_NO_SECRET = ("downloadUrl", "Authorization", "sk_", "eyJ")


def audit_list(env: dict[str, str], org: uuid.UUID, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [CLI, "audit", "list", "--org", str(org), "--format", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


async def records_of(world: World, org: uuid.UUID) -> int:
    async with world.db.connect() as conn:
        query = select(func.count()).where(export_url_audit.c.organization_id == org)
        return int((await conn.execute(query)).scalar_one())


async def wait_for_records(world: World, org: uuid.UUID, count: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while (found := await records_of(world, org)) < count:
        assert time.monotonic() < deadline, f"{found} of {count} records written"
        await asyncio.sleep(0.05)
    assert found == count, f"{found} records for {count} URLs"


def token_of(response: httpx.Response) -> str:
    return parse_qs(urlsplit(response.json()["data"]["downloadUrl"]).query)["Authorization"][0]


async def test_an_organizations_records_are_the_urls_handed_out_to_it_across_replicas(
    make_settings: MakeSettings, world: World, cli_env: dict[str, str]
) -> None:
    a, b = world.tenant(), world.tenant()
    exports_a = [await world.export(a) for _ in range(2)]
    export_b = await world.export(b)
    key = await world.api_key(a.org)
    token = world.jwt(a.org)
    settings = make_settings(audit_flush_seconds=0.1, rate_limit_per_minute=0)
    handed_out: list[dict[str, Any]] = []
    async with serve(settings) as one, serve(settings) as two, serve(settings) as three:
        for i, replica in enumerate((one, two, three) * 3):
            export = exports_a[i % 2]
            headers = key_headers(key) if i % 2 else bearer(token)
            headers |= {"User-Agent": f"agent-{i}", "X-Request-ID": f"audit-{uuid.uuid4()}"}
            answer = await replica.get(a.path(export["id"]), headers=headers)
            assert answer.status_code == 200
            handed_out.append({"request": headers["X-Request-ID"], "export": export, "i": i})
        assert (
            await one.get(b.path(export_b["id"]), headers=bearer(world.jwt(b.org)))
        ).status_code == 200
        await wait_for_records(world, a.org, len(handed_out))
    listed = await asyncio.to_thread(audit_list, cli_env, a.org)
    assert len(listed) == len(handed_out)
    assert [r["issued_at"] for r in listed] == sorted(r["issued_at"] for r in listed)
    by_request = {r["request_id"]: r for r in listed}
    for url in handed_out:
        record = by_request[url["request"]]
        assert record["organization_id"] == str(a.org)
        assert record["export_id"] == str(url["export"]["id"])
        assert record["audience_id"] == str(a.audience) and record["run_id"] == str(a.run)
        assert record["file_name"] == url["export"]["file_name"]
        assert record["user_agent"] == f"agent-{url['i']}"
        assert record["auth_method"] == ("api_key" if url["i"] % 2 else "jwt")
        assert record["signer"] == "b2-native" and record["client_ip"] == "127.0.0.1"
        assert datetime.fromisoformat(record["url_expires_at"]) > datetime.now(UTC)
    # Minted once per file per replica at most; the rest reused.
    assert sum(not r["reused"] for r in listed) <= 6
    assert {r["organization_id"] for r in listed} == {str(a.org)}
    text = json.dumps(listed)
    for secret in (key, token, *CONTAINS_NO_SECRET):
        assert secret not in text


async def test_a_burst_ended_at_once_by_sigterm_is_written_before_exit(
    cli_env: dict[str, str], world: World, tenant: Tenant, tmp_path: Path
) -> None:
    exports = [await world.export(tenant) for _ in range(3)]
    key = await world.api_key(tenant.org)
    # Batches only on a timer far away: what is written comes from the shutdown's flush.
    extra = {"AUDIT_FLUSH_SECONDS": "60", "RATE_LIMIT_PER_MINUTE": "0"}
    with server_process(cli_env, tmp_path, extra) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.get(tenant.path(exports[i % 3]["id"]), headers=key_headers(key))
                    for i in range(150)
                )
            )
        handed_out = sum(answer.status_code == 200 for answer in answers)
        assert handed_out == 150
        assert await records_of(world, tenant.org) == 0  # nothing flushed yet
        os.kill(SERVER_PIDS[url], signal.SIGTERM)
        # server_process waits for the exit when this block ends.
    await wait_for_records(world, tenant.org, handed_out, within=1)


async def test_records_wait_through_a_postgres_outage(
    make_settings: MakeSettings, database_url: str, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    proxy = await TcpProxy(database_url).start()
    try:
        settings = make_settings(database_url=proxy.url(), audit_flush_seconds=3)
        async with serve(settings) as client:
            for _ in range(10):
                assert (
                    await client.get(tenant.path(export["id"]), headers=headers)
                ).status_code == 200
            proxy.set_mode("refuse")
            proxy.drop_all()
            # The first batch fails against the outage and waits at the head of the queue.
            await wait_for_log("audit batch not written", within=10)
            assert await records_of(world, tenant.org) == 0
            proxy.set_mode("pass")
            await wait_for_records(world, tenant.org, 10, within=10)
    finally:
        await proxy.stop()


async def wait_for_log(text: str, within: float) -> None:
    import logging

    seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                seen.set()

    watch = Watch()
    logging.getLogger("app.audit").addHandler(watch)
    try:
        await asyncio.wait_for(seen.wait(), within)
    finally:
        logging.getLogger("app.audit").removeHandler(watch)


def a_record(org: uuid.UUID, **changes: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "issued_at": time.time(),
        "request_id": "r",
        "principal": Principal(organization_id=org, actor_id="user", method="jwt"),
        "export_id": uuid.uuid4(),
        "audience_id": uuid.uuid4(),
        "run_id": uuid.uuid4(),
        "signer": "b2-native",
        "bucket_name": "orbit-exports-test",
        "file_name": "exports/a.csv",
        "url_expires_at": datetime.now(UTC) + timedelta(hours=1),
        "reused": False,
        "client": ("192.0.2.7", 4711),
        "user_agent": "curl",
    }
    return AuditRecord(**(values | changes))


def as_row(record: AuditRecord) -> dict[str, Any]:
    return dict(zip(COLUMNS, row_of(record), strict=True))


@asynccontextmanager
async def audit_log(
    make_settings: MakeSettings, **options: Any
) -> AsyncIterator[tuple[AuditLog, Database, list[str]]]:
    settings = make_settings()
    db = Database(settings, settings.database_url.get_secret_value())  # type: ignore[union-attr]
    statements: list[str] = []
    db.on_statement = statements.append
    log = AuditLog(db, flush_seconds=options.pop("flush_seconds", 0.05), **options)
    try:
        yield log, db, statements
    finally:
        await db.close()


async def test_each_batch_is_one_statement_of_at_most_a_thousand_records(
    make_settings: MakeSettings, world: World
) -> None:
    org = uuid.uuid4()
    async with audit_log(make_settings, queue_max=10_000) as (log, _, statements):
        for _ in range(2500):
            log.record(a_record(org))
        writer = asyncio.create_task(log.run())
        try:
            await wait_for_records(world, org, 2500)
        finally:
            writer.cancel()
    assert len(statements) == 3


async def test_records_beyond_the_queue_are_counted_never_silent(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    dropped: list[int] = []
    async with audit_log(make_settings, queue_max=1000, on_dropped=dropped.append) as (log, _, _):
        for _ in range(1005):
            log.record(a_record(uuid.uuid4()))
    assert len(log) == 1000 and sum(dropped) == 5
    lines = [r.getMessage() for r in caplog.records if r.name == "app.audit"]
    assert len(lines) == 1 and "records dropped" in lines[0]


async def test_a_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    make_settings: MakeSettings, world: World, tenant: Tenant, cli_env: dict[str, str]
) -> None:
    export = await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    cases: list[tuple[list[str], str, str | None]] = [
        ([], "203.0.113.9", "127.0.0.1"),  # no trusted proxy: the peer
        (["127.0.0.1"], "203.0.113.9", "203.0.113.9"),
        (["127.0.0.1"], "203.0.113.9, 10.0.0.5", "10.0.0.5"),  # the nearest untrusted
        (["127.0.0.1", "10.0.0.0/8"], "203.0.113.9, 10.0.0.5", "203.0.113.9"),
        (["127.0.0.1"], "not-an-address", None),  # garbage: no address, never a failed write
    ]
    for trusted, forwarded, expected in cases:
        settings = make_settings(trusted_proxies=trusted, audit_flush_seconds=0.05)
        request = f"xff-{uuid.uuid4()}"
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4711))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            answer = await client.get(
                tenant.path(export["id"]),
                headers=headers | {"X-Forwarded-For": forwarded, "X-Request-ID": request},
            )
            assert answer.status_code == 200
        (record,) = [
            r
            for r in await asyncio.to_thread(audit_list, cli_env, tenant.org)
            if r["request_id"] == request
        ]
        assert record["client_ip"] == expected, (trusted, forwarded)


async def test_with_audit_off_nothing_is_recorded(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    async with serve(make_settings(audit=False)) as client:
        answer = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
        assert answer.status_code == 200
    assert await records_of(world, tenant.org) == 0


async def test_list_filters_and_prune(world: World, cli_env: dict[str, str]) -> None:
    org = uuid.uuid4()
    now = datetime.now(UTC)

    def by(actor: str) -> Principal:
        return Principal(organization_id=org, actor_id=actor, method="api_key")

    old = a_record(org, issued_at=(now - timedelta(days=100)).timestamp(), principal=by("key-1"))
    recent = [
        a_record(org, issued_at=(now - timedelta(hours=h)).timestamp(), principal=by(f"key-{h}"))
        for h in (1, 2)
    ]
    async with world.db.begin() as conn:
        for record in (old, *recent):
            await conn.execute(insert(export_url_audit).values(**as_row(record)))
    listed = await asyncio.to_thread(audit_list, cli_env, org)
    assert [r["actor_id"] for r in listed] == ["key-1", "key-2", "key-1"]
    by_actor = await asyncio.to_thread(audit_list, cli_env, org, "--actor", "key-2")
    assert [r["actor_id"] for r in by_actor] == ["key-2"]
    since = (now - timedelta(days=1)).isoformat()
    assert len(await asyncio.to_thread(audit_list, cli_env, org, "--since", since)) == 2
    by_export = await asyncio.to_thread(audit_list, cli_env, org, "--export", str(old.export_id))
    assert len(by_export) == 1
    assert len(await asyncio.to_thread(audit_list, cli_env, org, "--limit", "1")) == 1
    pruned = await asyncio.to_thread(
        subprocess.run,
        [CLI, "audit", "prune", "--older-than", "90"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pruned.returncode == 0 and "removed" in pruned.stdout
    assert len(await asyncio.to_thread(audit_list, cli_env, org)) == 2
