"""The export lookup. Tenant scope lives in the WHERE clause: another organization's export,
or one under a different audience or run, is simply not found.

This is the one statement every request runs (`Database.fetch_row` says how it is sent).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, select

from app.db.database import Database
from app.db.statements import compiled
from app.db.tables import intent_audience_exports as exports

FIND_EXPORT_SQL = compiled(
    select(exports).where(
        exports.c.id == bindparam("id"),
        exports.c.organization_id == bindparam("organization_id"),
        exports.c.audience_id == bindparam("audience_id"),
        exports.c.run_id == bindparam("run_id"),
    ),
    "id",
    "organization_id",
    "audience_id",
    "run_id",
)


async def find_export(
    db: Database,
    *,
    organization_id: uuid.UUID,
    audience_id: uuid.UUID,
    run_id: uuid.UUID,
    export_id: uuid.UUID,
) -> dict[str, Any] | None:
    row = await db.fetch_row(FIND_EXPORT_SQL, export_id, organization_id, audience_id, run_id)
    return None if row is None else dict(row)
