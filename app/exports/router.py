"""GET /v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from uuid import UUID

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError

from app.auth import SECURITY_REQUIREMENT, authenticate
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


class BareRequestRoute(APIRoute):
    """Calls the endpoint with the bare request, skipping FastAPI's per-request dependency and
    parameter resolution, which cost more than the database lookup in the profile
    (docs/performance.md). The endpoint authenticates and validates its path itself; the
    route's declared parameters, responses and security still make /openapi.json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response = await endpoint(request)
            assert isinstance(response, Response)
            return response

        return handle


_ERROR = {"model": ApiErrorResponse}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {**_ERROR, "description": "Missing or invalid credentials"},
    404: {**_ERROR, "description": "Export not found"},
    409: {**_ERROR, "description": "Stored export is not ready"},
    422: {**_ERROR, "description": "A path parameter is not a UUID"},
    429: {**_ERROR, "description": "Too many requests for this credential"},
    503: {**_ERROR, "description": "B2 export storage is not configured or unavailable"},
}


def _path_parameter(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }


class ExportPath(BaseModel):
    """The path's three ids, validated exactly as FastAPI would validate typed parameters."""

    audience_id: UUID = Field(alias="id")
    run_id: UUID = Field(alias="runId")
    export_id: UUID = Field(alias="exportId")


def _export_path(request: Request) -> ExportPath:
    try:
        return ExportPath.model_validate(request.path_params)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("path", *error["loc"])} for error in exc.errors()]
        ) from None


# Credentials are checked before the path: an unauthenticated caller learns nothing, not even
# which ids are malformed.
async def get_stored_export(request: Request) -> Response:
    principal = await authenticate(request)
    path = _export_path(request)
    state = app_state(request)
    row = await find_export(
        state.db,
        organization_id=principal.organization_id,
        audience_id=path.audience_id,
        run_id=path.run_id,
        export_id=path.export_id,
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


def add_export_route(app: FastAPI) -> None:
    # On the app's own router rather than through `include_router`: FastAPI matches the routes
    # of an included router through an extra layer on every request (0.7-5.8% of this route's
    # throughput in A/B runs; docs/performance.md).
    app.router.add_api_route(
        "/v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}",
        get_stored_export,
        methods=["GET"],
        route_class_override=BareRequestRoute,
        tags=["Audience Builder"],
        summary="Get a stored export and fresh signed download URL",
        response_model=StoredExportResponse,
        responses=_RESPONSES,
        openapi_extra={
            "security": SECURITY_REQUIREMENT,
            "parameters": [_path_parameter(name) for name in ("id", "runId", "exportId")],
        },
    )
