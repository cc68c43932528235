"""GET /v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}: the request path.

`AuthenticationMiddleware` (app/auth/middleware.py) resolves the caller before routing ->
`CurrentPrincipal` reads it (401 without one) and applies the rate limit -> FastAPI validates
the path -> the scoped lookup (`queries`) -> the export's state -> a signed URL
(`app.storage`) -> the `{data, meta}` envelope.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Request

from app.api.envelope import ApiErrorResponse, envelope_meta, request_id
from app.audit.log import AuditLog, AuditRecord
from app.auth.dependencies import SECURITY_REQUIREMENT, CurrentPrincipal
from app.core import request_state
from app.core.clock import utc_now
from app.core.errors import (
    ExportExpired,
    ExportFailed,
    ExportNotFound,
    ExportNotReady,
    StorageError,
    StorageNotConfigured,
)
from app.db.database import Database
from app.exports.queries import find_export
from app.exports.schemas import (
    IntentAudienceExport,
    IntentAudienceExportWithUrl,
    StoredExportResponse,
)
from app.storage.signer import NoTimeLeft, UrlSigner

logger = logging.getLogger("app.exports")
router = APIRouter(tags=["Audience Builder"])


@dataclass(frozen=True, slots=True)
class ExportBackends:
    """What the route talks to, built by the composition root (`app.container`)."""

    database: Database
    # None when B2 is not configured: completed exports then answer 503.
    signer: UrlSigner | None
    # STORAGE_SIGNER, as the audit records it.
    signer_name: str = "b2-native"
    # None with AUDIT=off.
    audit: AuditLog | None = None


def backends_of(request: Request) -> ExportBackends:
    # Read directly, not declared as a dependency: each dependency FastAPI resolves costs this
    # route about 5 % of its throughput (docs/performance.md), and nothing needs to override it.
    backends: ExportBackends = request.app.state.export_backends
    return backends


_ERROR = {"model": ApiErrorResponse}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERROR, "description": "Missing or invalid credentials"},
    404: {**_ERROR, "description": "Export not found"},
    409: {**_ERROR, "description": "Stored export is not ready"},
    422: {**_ERROR, "description": "A path parameter is not a UUID"},
    429: {**_ERROR, "description": "Too many requests for this credential"},
    502: {**_ERROR, "description": "B2 refused to sign this export's file"},
    503: {**_ERROR, "description": "B2 export storage is not configured or unavailable"},
}


@router.get(
    "/v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}",
    summary="Get a stored export and fresh signed download URL",
    response_model=StoredExportResponse,
    responses=_RESPONSES,
    openapi_extra={"security": SECURITY_REQUIREMENT},
)
async def get_stored_export(
    request: Request,
    principal: CurrentPrincipal,
    audience_id: Annotated[UUID, Path(alias="id")],
    run_id: Annotated[UUID, Path(alias="runId")],
    export_id: Annotated[UUID, Path(alias="exportId")],
) -> StoredExportResponse:
    backends = backends_of(request)
    row = await find_export(
        backends.database,
        organization_id=principal.organization_id,
        audience_id=audience_id,
        run_id=run_id,
        export_id=export_id,
    )
    if row is None:
        raise ExportNotFound()
    export = IntentAudienceExport.model_validate(row)
    if export.status == "processing":
        raise ExportNotReady()
    if export.status == "failed":
        raise ExportFailed(
            details={"errorCode": export.error_code, "errorMessage": export.error_message}
        )
    if export.expires_at is not None and export.expires_at <= utc_now():
        raise ExportExpired()
    if backends.signer is None:
        raise StorageNotConfigured()
    # The table's CHECK constraint guarantees both for completed exports.
    assert export.bucket_name is not None and export.file_name is not None
    try:
        signed = await backends.signer.sign(export.bucket_name, export.file_name, export.expires_at)
    except NoTimeLeft:
        # Expired between the check above and the signing clock read.
        raise ExportExpired() from None
    except StorageError:
        # This export's file (or bucket) is refused by B2: someone must fix the row or the
        # bucket's key; the id says which (never the token, which was not issued).
        logger.warning("B2 refused to sign export %s", export_id)
        raise
    request.scope["state"][request_state.SIGNING] = "cached_token" if signed.reused else "minted"
    if backends.audit is not None:
        backends.audit.record(
            AuditRecord(
                issued_at=time.time(),
                request_id=request_id(request),
                principal=principal,
                export_id=export_id,
                audience_id=audience_id,
                run_id=run_id,
                signer=backends.signer_name,
                bucket_name=export.bucket_name,
                file_name=export.file_name,
                url_expires_at=signed.expires_at,
                reused=signed.reused,
                client=request.scope.get("client"),
                user_agent=request.headers.get("user-agent"),
            )
        )
    return StoredExportResponse(
        data=IntentAudienceExportWithUrl(
            export=export,
            download_url=signed.url,
            download_url_expires_at=signed.expires_at,
            download_url_ttl_seconds=signed.ttl_seconds,
        ),
        meta=envelope_meta(request),
    )
