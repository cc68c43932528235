"""At most MAX_CONCURRENT_REQUESTS requests at once in this worker, each with at most
MAX_HEADER_BYTES of headers; beyond either, the envelope's 503 SERVER_OVERLOADED (with
Retry-After) or 431 HEADERS_TOO_LARGE at once, before any work. It sits inside CORS, so a
browser can read the answer. uvicorn's own limits (`limit_concurrency`, the parsers' header
bounds in `app.cli.uvicorn_compat`) stay as the backstop for what never reaches the app."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.core.errors import ApiException, HeadersTooLarge, Overloaded


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_in_flight: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_header_bytes = max_header_bytes
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal: ApiException | None = None
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
