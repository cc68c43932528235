"""The one error hierarchy and the handlers that render every error in the contract's envelope.

Raise a subclass of `ApiError` anywhere; never build an error response by hand. FastAPI's own
errors (unknown route, wrong method, invalid path parameter) and unexpected exceptions go
through the same renderer, so every status a client can see has the same shape.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.request_context import envelope_meta, response_headers

logger = logging.getLogger("app.errors")

RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    status_code: int = 500
    code: str = "INTERNAL_ERROR"
    default_message: ClassVar[str] = "The server could not complete the request."
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


class Unauthorized(ApiError):
    status_code = 401
    code = "UNAUTHORIZED"
    default_message = "Missing or invalid credentials."

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ValidationFailed(ApiError):
    status_code = 422
    code = "VALIDATION_ERROR"
    default_message = "The request is not valid."


class RateLimited(ApiError):
    status_code = 429
    code = "RATE_LIMITED"
    default_message = "Too many requests for this credential; slow down."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.wait = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.wait)}


class RouteNotFound(ApiError):
    status_code = 404
    code = "NOT_FOUND"
    default_message = "No such route."


class MethodNotAllowed(ApiError):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"
    default_message = "This method is not allowed on this route."


class ExportNotFound(ApiError):
    status_code = 404
    code = "EXPORT_NOT_FOUND"
    default_message = "Export not found."


class ExportExpired(ApiError):
    status_code = 404
    code = "EXPORT_EXPIRED"
    default_message = "This export has expired and its file is no longer available."


class ExportNotReady(ApiError):
    status_code = 409
    code = "EXPORT_NOT_READY"
    default_message = "This export is still being generated; try again shortly."


class ExportFailed(ApiError):
    status_code = 409
    code = "EXPORT_FAILED"
    default_message = "This export failed and has no file to download."


class StorageNotConfigured(ApiError):
    status_code = 503
    code = "STORAGE_NOT_CONFIGURED"
    default_message = "Export storage (Backblaze B2) is not configured on this server."


class StorageUnavailable(ApiError):
    status_code = 503
    code = "STORAGE_UNAVAILABLE"
    default_message = "Export storage is unavailable; try again shortly."
    retry_after = RETRY_AFTER_SECONDS


class DatabaseUnavailable(ApiError):
    status_code = 503
    code = "DATABASE_UNAVAILABLE"
    default_message = "The database is unavailable; try again shortly."
    retry_after = RETRY_AFTER_SECONDS


def error_response(request: Request, error: ApiError) -> Response:
    # Imported here to keep this module free of the response models' import cycle.
    from app.exports.schemas import ApiError as ApiErrorBody
    from app.exports.schemas import ApiErrorResponse

    request.state.error_code = error.code
    body = ApiErrorResponse(
        error=ApiErrorBody(code=error.code, message=error.message, details=error.details),
        meta=envelope_meta(request),
    )
    return Response(
        content=body.model_dump_json(by_alias=True),
        status_code=error.status_code,
        media_type="application/json",
        headers={**error.headers(), **response_headers(request)},
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        details.append(
            {
                "location": loc[0] if loc else "request",
                "parameter": loc[-1] if len(loc) > 1 else None,
                "message": err.get("msg", "invalid value"),
            }
        )
    return details


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status_code >= 500:
        logger.warning("request failed: %s %s", exc.code, exc.message)
    return error_response(request, exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    names = ", ".join(sorted({d["parameter"] for d in details if d["parameter"]}))
    message = f"Invalid value for {names}." if names else ValidationFailed.default_message
    return error_response(request, ValidationFailed(message, details=details))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: ApiError
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        error = RouteNotFound()
    elif exc.status_code == 405:
        error = MethodNotAllowed()
    else:
        error = ApiError(str(exc.detail))
        error.status_code = exc.status_code
        error.code = f"HTTP_{exc.status_code}"
    response = error_response(request, error)
    response.headers.update(headers)
    return response


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log only; the caller learns nothing about internals.
    logger.error("unhandled exception", exc_info=exc)
    return error_response(request, ApiError())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
