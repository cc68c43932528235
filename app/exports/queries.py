"""The export lookup. Tenant scope lives in the WHERE clause: another organization's export,
or one under a different audience or run, is simply not found."""

from __future__ import annotations

import uuid

from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.tables import intent_audience_exports as exports

_BY_SCOPED_ID = select(exports)


async def find_export(
    conn: AsyncConnection,
    *,
    organization_id: uuid.UUID,
    audience_id: uuid.UUID,
    run_id: uuid.UUID,
    export_id: uuid.UUID,
) -> RowMapping | None:
    result = await conn.execute(
        _BY_SCOPED_ID.where(
            exports.c.id == export_id,
            exports.c.organization_id == organization_id,
            exports.c.audience_id == audience_id,
            exports.c.run_id == run_id,
        )
    )
    return result.mappings().one_or_none()
