"""Probes for load balancers and orchestrators. No credentials, no configuration in the body."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy import text

from app.errors import ApiError
from app.exports.schemas import ApiErrorResponse, ApiMeta
from app.request_context import envelope_meta
from app.state import app_state

router = APIRouter(tags=["Health"])

READY_DB_TIMEOUT_SECONDS = 0.5


class NotReady(ApiError):
    status_code = 503
    code = "NOT_READY"
    default_message = "The service is not ready to serve requests."
    retry_after = 5


class ProbeStatus(BaseModel):
    status: str
    checks: dict[str, str] = {}


class ProbeResponse(BaseModel):
    data: ProbeStatus
    meta: ApiMeta


def _ok(request: Request, status: ProbeStatus) -> Response:
    body = ProbeResponse(data=status, meta=envelope_meta(request))
    return Response(body.model_dump_json(), media_type="application/json")


@router.get("/livez", response_model=ProbeResponse, summary="The process is up")
async def livez(request: Request) -> Response:
    return _ok(request, ProbeStatus(status="ok"))


async def _database_ok(request: Request) -> bool:
    try:
        async with asyncio.timeout(READY_DB_TIMEOUT_SECONDS):
            async with app_state(request).read_engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; the reason is not exposed
        return False
    return True


@router.get(
    "/readyz",
    response_model=ProbeResponse,
    responses={503: {"model": ApiErrorResponse, "description": "Not ready"}},
    summary="The database answers and storage is configured",
)
async def readyz(request: Request) -> Response:
    checks: dict[str, Any] = {
        "database": "ok" if await _database_ok(request) else "unavailable",
        "storage": "ok" if app_state(request).signer is not None else "not_configured",
    }
    if any(value != "ok" for value in checks.values()):
        raise NotReady(details=checks)
    return _ok(request, ProbeStatus(status="ready", checks=checks))
