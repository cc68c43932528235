"""The export lookup. Tenant scope lives in the WHERE clause: another organization's export,
or one under a different audience or run, is simply not found.

This is the one statement every request runs, so it goes to the asyncpg connection under the
pooled SQLAlchemy connection (a cached prepared statement, one round trip) instead of through
SQLAlchemy's execution and result layers, which cost more than the query itself here. The
column list comes from the table definition, so it cannot drift from the schema.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import DRIVER_OUTAGES
from app.tables import intent_audience_exports as exports

_COLUMNS = ", ".join(column.name for column in exports.c)
# Built from our own table definition at import time; every value is a bind parameter.
FIND_EXPORT_SQL = (
    f"SELECT {_COLUMNS} FROM {exports.name}"  # noqa: S608
    " WHERE id = $1 AND organization_id = $2 AND audience_id = $3 AND run_id = $4"
)


async def find_export(
    conn: AsyncConnection,
    *,
    organization_id: uuid.UUID,
    audience_id: uuid.UUID,
    run_id: uuid.UUID,
    export_id: uuid.UUID,
) -> dict[str, Any] | None:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    try:
        row = await driver.fetchrow(
            FIND_EXPORT_SQL, export_id, organization_id, audience_id, run_id
        )
    except DRIVER_OUTAGES:
        # SQLAlchemy did not see this statement fail: drop the connection from the pool
        # ourselves, as it would, so the next request connects afresh.
        await conn.invalidate()
        raise
    return None if row is None else dict(row)
