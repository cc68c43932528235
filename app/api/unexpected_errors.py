"""The envelope's 500 for an unexpected exception, answered inside the CORS middleware.

Starlette gives an `Exception` handler to its outermost middleware, outside every one of ours,
so that 500 carried no CORS headers and the dashboard could not read it. This middleware sits
just inside CORS; the app-level handler stays for errors raised further out.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import on_unexpected


class UnexpectedErrorMiddleware:
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
            response = await on_unexpected(Request(scope), exc)
            await response(scope, receive, send)
