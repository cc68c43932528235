"""The schema comes from Alembic alone, matches the table definitions, and guards its data."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, insert, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.tables import intent_audience_exports, metadata

EXPECTED_COLUMNS = (
    "id organization_id audience_id run_id export_type status storage_provider bucket_name "
    "file_id file_name content_type byte_size row_count content_sha1 error_code error_message "
    "requested_by completed_at expires_at created_at updated_at"
).split()


async def test_migrated_schema_matches_the_table_definitions(db: AsyncEngine) -> None:
    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with db.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_export_table_has_the_platforms_column_names_and_types(db: AsyncEngine) -> None:
    def columns(conn: Connection) -> dict[str, str]:
        return {
            c["name"]: str(c["type"]) for c in inspect(conn).get_columns("intent_audience_exports")
        }

    async with db.connect() as conn:
        found = await conn.run_sync(columns)
    assert list(found) == EXPECTED_COLUMNS
    assert found["id"] == found["organization_id"] == found["requested_by"] == "UUID"
    assert found["byte_size"] == "BIGINT"
    assert found["row_count"] == "INTEGER"
    assert found["expires_at"] == "TIMESTAMP"  # inspect drops the zone; checked below
    async with db.connect() as conn:
        zone = await conn.scalar(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'intent_audience_exports' AND column_name = 'expires_at'"
            )
        )
    assert zone == "timestamp with time zone"


def _row(**overrides: Any) -> dict[str, Any]:
    return {
        "organization_id": uuid.uuid4(),
        "audience_id": uuid.uuid4(),
        "run_id": uuid.uuid4(),
        "status": "processing",
    } | overrides


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "done"},
        {"export_type": "xlsx"},
        {"storage_provider": "s3"},
        {"byte_size": -1},
        {"row_count": -1},
        {"status": "completed"},  # no bucket or file name
        # Bucket names outside B2's rules (migration 0005).
        {"bucket_name": "short"},
        {"bucket_name": "a" * 64},
        {"bucket_name": "evil.example.com"},
        {"bucket_name": "bucket/../other"},
        {"bucket_name": "b2-reserved-name"},
        {"bucket_name": "bucket name"},
    ],
)
async def test_check_constraints_reject_bad_rows(db: AsyncEngine, bad: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError):
        async with db.begin() as conn:
            await conn.execute(insert(intent_audience_exports).values(**_row(**bad)))


async def test_lookup_is_served_by_indexes(db: AsyncEngine) -> None:
    def indexes(conn: Connection) -> list[list[str | None]]:
        return [i["column_names"] for i in inspect(conn).get_indexes("intent_audience_exports")]

    async with db.connect() as conn:
        assert ["organization_id", "audience_id", "run_id"] in await conn.run_sync(indexes)


async def test_a_migration_waits_for_a_lock_briefly_then_gives_up(server_url: str) -> None:
    """Behind a long transaction, a migration that needs a table lock fails after 5 s
    (lock_timeout) instead of queueing every read of the serving fleet behind it; run again
    once the way is clear, it applies."""
    import asyncio
    import time

    from alembic import command
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.db.migrations import alembic_config
    from tests.fixtures.database import admin

    name = f"orbit_locks_{uuid.uuid4().hex[:12]}"
    await admin(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_async_engine(url)
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(url), "0004")
        async with engine.connect() as reader:
            await reader.execute(text("SELECT count(*) FROM intent_audience_exports"))
            # The reader's transaction holds its lock; 0005 needs ACCESS EXCLUSIVE.
            started = time.monotonic()
            with pytest.raises(DBAPIError, match="lock timeout"):
                await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
            assert 4.5 < time.monotonic() - started < 10
            await reader.rollback()
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
    finally:
        await engine.dispose()
        await admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
