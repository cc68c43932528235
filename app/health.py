"""Probes for load balancers and orchestrators. No credentials, no configuration in the body."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from app.errors import ApiError
from app.exports.schemas import ApiErrorResponse, ApiMeta
from app.request_context import envelope_meta
from app.state import AppState, app_state

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
        await app_state(request).db.fetch_row("SELECT 1", deadline=READY_DB_TIMEOUT_SECONDS)
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
    state = app_state(request)
    if state.draining:
        raise NotReady("The service is shutting down.", details={"shutdown": "in_progress"})
    checks: dict[str, Any] = {
        "database": "ok" if await _database_ok(request) else "unavailable",
        "storage": "ok" if state.signer is not None else "not_configured",
    }
    if any(value != "ok" for value in checks.values()):
        raise NotReady(details=checks)
    return _ok(request, ProbeStatus(status="ready", checks=checks))


@contextlib.contextmanager
def draining_on_sigterm(state: AppState) -> Iterator[None]:
    """Mark the app as draining when SIGTERM arrives, then let the server's own handler run
    (uvicorn stops accepting connections and waits for in-flight requests)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        state.draining = True
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
