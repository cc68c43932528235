"""Probes for load balancers and orchestrators. No credentials, no configuration in the body."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from app.api.envelope import ApiErrorResponse, ApiMeta, envelope_meta
from app.core.errors import NotReady

router = APIRouter(tags=["Health"])


class Readiness:
    """What /readyz answers, from this replica's own state first.

    Not ready: before the lifespan has started, while draining (SIGTERM), without storage, and
    until the database has been reached once since start (a misconfigured rollout stays out
    of the balancer). After that, a database outage makes the replica not ready only once it
    has lasted longer than `grace` (READINESS_DEPENDENCY_GRACE_SECONDS): every replica shares
    the database, and taking them all out of the balancer at once during a few-second
    PgBouncer or Postgres restart would turn the service's own 503 `DATABASE_UNAVAILABLE`
    with Retry-After into the balancer's bare 503 for everyone.

    The database is pinged at most once per `interval` however often /readyz is asked (the
    result is kept, and callers during a ping share it), so the state it acts on is never
    more than about `interval` old.
    """

    def __init__(
        self,
        ping_database: Callable[[], Awaitable[None]],
        *,
        storage_configured: bool,
        grace: float,
        reached: Callable[[], bool] = lambda: False,
        interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping_database
        # The database reached by anything since start (the pool opened for a request).
        self._reached_elsewhere = reached
        self.storage_configured = storage_configured
        self._grace = grace
        self._interval = interval
        self._monotonic = monotonic
        self.started = False
        # Set when SIGTERM arrives: /readyz answers 503 so load balancers stop routing here.
        self.draining = False
        self._reached = False
        self._checked_at = -math.inf
        self._up = False
        self._down_since: float | None = None
        self._checking: asyncio.Future[bool] | None = None

    async def database_state(self) -> str:
        """ok; degraded (down, within the grace); unavailable (down longer, or never up)."""
        up = await self._database_up()
        if up:
            return "ok"
        if not (self._reached or self._reached_elsewhere()) or self._down_since is None:
            return "unavailable"
        return "degraded" if self._monotonic() - self._down_since <= self._grace else "unavailable"

    async def _database_up(self) -> bool:
        if self._monotonic() - self._checked_at < self._interval:
            return self._up
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._check())
        return await asyncio.shield(self._checking)

    async def _check(self) -> bool:
        try:
            await self._ping()
        except Exception:  # any failure means "down"; the reason is not exposed
            up = False
        else:
            up = True
        now = self._monotonic()
        if up:
            self._reached = True
            self._down_since = None
        elif self._down_since is None:
            self._down_since = now
        self._up, self._checked_at, self._checking = up, now, None
        return up


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


@router.get(
    "/readyz",
    responses={503: {"model": ApiErrorResponse, "description": "Not ready"}},
    summary="Started, not draining, storage configured, the database reached",
)
async def readyz(
    request: Request, readiness: Annotated[Readiness, Depends(get_readiness)]
) -> ProbeResponse:
    if readiness.draining:
        raise NotReady("The service is shutting down.", details={"shutdown": "in_progress"})
    checks: dict[str, Any] = {
        "database": await readiness.database_state(),
        "storage": "ok" if readiness.storage_configured else "not_configured",
    }
    if not readiness.started or any(value not in ("ok", "degraded") for value in checks.values()):
        raise NotReady(details=checks)
    return ProbeResponse(
        data=ProbeStatus(status="ready", checks=checks), meta=envelope_meta(request)
    )


@contextlib.contextmanager
def draining_on_sigterm(readiness: Readiness, delay: float = 0.0) -> Iterator[None]:
    """Mark the app as draining when SIGTERM arrives (/readyz answers 503), keep serving for
    `delay` seconds (SHUTDOWN_DELAY_SECONDS: the load balancer's health check takes the
    replica out meanwhile, so no new request meets a closed port), then let the server's own
    handler run (uvicorn stops accepting connections and waits for in-flight requests)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if not callable(previous):
            readiness.draining = True
            return
        if readiness.draining or delay <= 0:
            # A second SIGTERM goes straight to the server (uvicorn then stops at once).
            readiness.draining = True
            previous(signum, frame)
            return
        readiness.draining = True
        loop.call_later(delay, previous, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
