"""The floor for `make bench`: FastAPI + a raw asyncpg pool, one primary-key SELECT of the same
row, a body of the same size. No auth, no signing, no envelope logic: what the endpoint cannot
go below on this machine."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
from fastapi import FastAPI, Response

QUERY = "SELECT * FROM intent_audience_exports WHERE id = $1"
# Stands in for the signed URL and the meta block the service adds, byte for byte similar.
PADDING = "x" * int(os.environ.get("FLOOR_PADDING", "420"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    app.state.pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, type(None))) else str(value)


@app.get("/v1/intent/audiences/{audience_id}/runs/{run_id}/exports/{export_id}")
async def floor(audience_id: str, run_id: str, export_id: UUID) -> Response:
    async with app.state.pool.acquire() as conn:
        row = await conn.fetchrow(QUERY, export_id)
    body = {"data": {"export": {k: _plain(v) for k, v in row.items()}, "pad": PADDING}}
    return Response(json.dumps(body), media_type="application/json")
