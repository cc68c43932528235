"""GET /metrics for Prometheus; with METRICS_TOKEN set, scrapers must send it as a Bearer token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from app.core.errors import Unauthorized
from app.core.metrics import WorkerSampler, exposition

router = APIRouter()


@dataclass(slots=True)
class MetricsAccess:
    sampler: WorkerSampler
    # METRICS_TOKEN, replaced when it is rotated (a reload).
    token: bytes | None


async def get_metrics_access(request: Request) -> MetricsAccess:
    access: MetricsAccess = request.app.state.metrics_access
    return access


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request, access: Annotated[MetricsAccess, Depends(get_metrics_access)]
) -> Response:
    if access.token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), access.token
        ):
            raise Unauthorized("Scraping metrics needs Authorization: Bearer <METRICS_TOKEN>.")
    access.sampler.sample()
    body, content_type = exposition()
    return Response(body, media_type=content_type)
