"""CORS for the dashboard: exact origins from CORS_ALLOW_ORIGINS, the three request headers the
API reads, `X-Request-ID` exposed. Other origins get no CORS headers; a rejected preflight is
answered in the contract's error envelope instead of Starlette's plain-text 400."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.core.errors import CorsRejected

ALLOWED_REQUEST_HEADERS = ["Authorization", "X-API-Key", "X-Request-ID"]


class DashboardCORSMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=["GET"],
            allow_headers=ALLOWED_REQUEST_HEADERS,
            expose_headers=["X-Request-ID"],
            # Bearer tokens and API keys travel in headers; no cookies are involved.
            allow_credentials=False,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code == 200:
                    # 204 and no body, rather than Starlette's plain-text "OK".
                    response = Response(
                        status_code=204,
                        headers={
                            k: v
                            for k, v in response.headers.items()
                            if k.lower().startswith("access-control-") or k.lower() == "vary"
                        },
                    )
                else:
                    failures = bytes(response.body).decode().removeprefix("Disallowed CORS ")
                    response = error_response(
                        Request(scope), CorsRejected(details={"rejected": failures.split(", ")})
                    )
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
