"""The one handler family that renders every error in the contract's envelope: our
`ApiException`s, FastAPI's own errors (unknown route, wrong method, invalid path parameter) and
unexpected exceptions, so every status a client can see has the same shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.envelope import ApiError, ApiErrorResponse, envelope_meta, response_headers
from app.core import request_state
from app.core.errors import ApiException, MethodNotAllowed, RouteNotFound, ValidationFailed

logger = logging.getLogger("app.errors")


def error_response(request: Request, error: ApiException) -> Response:
    request.scope.setdefault("state", {})[request_state.ERROR_CODE] = error.code
    body = ApiErrorResponse(
        error=ApiError(code=error.code, message=error.message, details=error.details),
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
    assert isinstance(exc, ApiException)
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
    error: ApiException
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        error = RouteNotFound()
    elif exc.status_code == 405:
        error = MethodNotAllowed()
    else:
        error = ApiException(str(exc.detail))
        error.status_code = exc.status_code
        error.code = f"HTTP_{exc.status_code}"
    response = error_response(request, error)
    response.headers.update(headers)
    return response


async def on_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log only; the caller learns nothing about internals.
    logger.error("unhandled exception", exc_info=exc)
    return error_response(request, ApiException())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiException, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
