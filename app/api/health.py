"""Probes for load balancers and orchestrators. No credentials, no configuration in the body."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from app.api.envelope import ApiErrorResponse, ApiMeta, envelope_meta
from app.core.errors import NotReady

router = APIRouter(tags=["Health"])


@dataclass(slots=True)
class Readiness:
    """What /readyz checks, given by the composition root."""

    # Raises when the database does not answer (within its own short deadline).
    ping_database: Callable[[], Awaitable[None]]
    storage_configured: bool
    # Set when SIGTERM arrives: /readyz answers 503 so load balancers stop routing here.
    draining: bool = False


async def get_readiness(request: Request) -> Readiness:
    readiness: Readiness = request.app.state.readiness
    return readiness


class ProbeStatus(BaseModel):
    status: str
    checks: dict[str, str] = {}


class ProbeResponse(BaseModel):
    data: ProbeStatus
    meta: ApiMeta


@router.get("/livez", summary="The process is up")
async def livez(request: Request) -> ProbeResponse:
    return ProbeResponse(data=ProbeStatus(status="ok"), meta=envelope_meta(request))


async def _database_ok(readiness: Readiness) -> bool:
    try:
        await readiness.ping_database()
    except Exception:  # any failure means "not ready"; the reason is not exposed
        return False
    return True


@router.get(
    "/readyz",
    responses={503: {"model": ApiErrorResponse, "description": "Not ready"}},
    summary="The database answers and storage is configured",
)
async def readyz(
    request: Request, readiness: Annotated[Readiness, Depends(get_readiness)]
) -> ProbeResponse:
    if readiness.draining:
        raise NotReady("The service is shutting down.", details={"shutdown": "in_progress"})
    checks: dict[str, Any] = {
        "database": "ok" if await _database_ok(readiness) else "unavailable",
        "storage": "ok" if readiness.storage_configured else "not_configured",
    }
    if any(value != "ok" for value in checks.values()):
        raise NotReady(details=checks)
    return ProbeResponse(
        data=ProbeStatus(status="ready", checks=checks), meta=envelope_meta(request)
    )


@contextlib.contextmanager
def draining_on_sigterm(readiness: Readiness) -> Iterator[None]:
    """Mark the app as draining when SIGTERM arrives, then let the server's own handler run
    (uvicorn stops accepting connections and waits for in-flight requests)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        readiness.draining = True
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
