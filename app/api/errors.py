"""The one handler family that renders every error in the contract's envelope: our `ApiError`s,
FastAPI's own errors (unknown route, wrong method, invalid path parameter) and unexpected
exceptions, so every status a client can see has the same shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.envelope import ApiError as ApiErrorBody
from app.api.envelope import ApiErrorResponse, envelope_meta, response_headers
from app.core.errors import (
    ApiError,
    HeadersTooLarge,
    MethodNotAllowed,
    Overloaded,
    RouteNotFound,
    ValidationFailed,
)

logger = logging.getLogger("app.errors")


def error_response(request: Request, error: ApiError) -> Response:
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


class UnexpectedErrorMiddleware:
    """Renders an unexpected exception as the envelope's 500 inside the CORS middleware.

    Starlette gives an `Exception` handler to its outermost middleware, outside every one of
    ours, so that 500 carried no CORS headers and the dashboard could not read it. This one
    sits just inside CORS; the app-level handler stays for errors raised further out.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # too late for an answer of ours: the server closes the connection
                raise
            response = await _on_unexpected(Request(scope), exc)
            await response(scope, receive, send)


class RequestLimitsMiddleware:
    """At most `max_in_flight` requests at once in this worker, each with at most
    `max_header_bytes` of headers; beyond either, the envelope's 503 SERVER_OVERLOADED (with
    Retry-After) or 431 HEADERS_TOO_LARGE at once, before any work. It sits inside CORS, so a
    browser can read the answer. uvicorn's own limits (`limit_concurrency`, h11's header size)
    stay as the backstop for what never reaches the app."""

    def __init__(self, app: ASGIApp, max_in_flight: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_header_bytes = max_header_bytes
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal: ApiError | None = None
        if self.in_flight >= self.max_in_flight:
            refusal = Overloaded()
        elif sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            refusal = HeadersTooLarge()
        if refusal is not None:
            await error_response(Request(scope), refusal)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
