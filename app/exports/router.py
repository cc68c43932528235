"""GET /v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from app.auth import SECURITY_REQUIREMENT, PrincipalDep
from app.db import database_call
from app.errors import (
    ExportExpired,
    ExportFailed,
    ExportNotFound,
    ExportNotReady,
    StorageNotConfigured,
)
from app.exports.queries import find_export
from app.exports.schemas import (
    ApiErrorResponse,
    IntentAudienceExport,
    IntentAudienceExportWithUrl,
    StoredExportResponse,
)
from app.request_context import envelope_meta, utc_now
from app.state import app_state

router = APIRouter(tags=["Audience Builder"])

_ERROR = {"model": ApiErrorResponse}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERROR, "description": "Missing or invalid credentials"},
    404: {**_ERROR, "description": "Export not found"},
    409: {**_ERROR, "description": "Stored export is not ready"},
    422: {**_ERROR, "description": "A path parameter is not a UUID"},
    429: {**_ERROR, "description": "Too many requests for this credential"},
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
    principal: PrincipalDep,
    audience_id: Annotated[uuid.UUID, Path(alias="id")],
    run_id: Annotated[uuid.UUID, Path(alias="runId")],
    export_id: Annotated[uuid.UUID, Path(alias="exportId")],
) -> Response:
    state = app_state(request)

    async def lookup() -> dict[str, Any] | None:
        async with state.read_engine.connect() as conn:
            return await find_export(
                conn,
                organization_id=principal.organization_id,
                audience_id=audience_id,
                run_id=run_id,
                export_id=export_id,
            )

    row = await database_call(state.settings.db_deadline_seconds, lookup)
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
    if state.signer is None:
        raise StorageNotConfigured()
    # The table's CHECK constraint guarantees both for completed exports.
    assert export.bucket_name is not None and export.file_name is not None
    try:
        signed = await state.signer.sign(export.bucket_name, export.file_name, export.expires_at)
    except ValueError:
        # Expired between the check above and the signing clock read.
        raise ExportExpired() from None
    request.state.b2 = "cached_token" if signed.reused else "minted"
    body = StoredExportResponse(
        data=IntentAudienceExportWithUrl(
            export=export,
            download_url=signed.url,
            download_url_expires_at=signed.expires_at,
            download_url_ttl_seconds=signed.ttl_seconds,
        ),
        meta=envelope_meta(request),
    )
    return Response(body.model_dump_json(by_alias=True), media_type="application/json")
