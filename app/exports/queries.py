"""The export lookup. Tenant scope lives in the WHERE clause: another organization's export,
or one under a different audience or run, is simply not found.

This is the one statement every request runs (`Database.fetch_row` says how it is sent). The
column list comes from the table definition, so it cannot drift from the schema.
"""

from __future__ import annotations

import uuid
from typing import Any

from app.db.database import Database
from app.db.tables import intent_audience_exports as exports

_COLUMNS = ", ".join(column.name for column in exports.c)
# Built from our own table definition at import time; every value is a bind parameter.
FIND_EXPORT_SQL = (
    f"SELECT {_COLUMNS} FROM {exports.name}"  # noqa: S608
    " WHERE id = $1 AND organization_id = $2 AND audience_id = $3 AND run_id = $4"
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
