"""Resolves the caller once per request, before routing, as polar's server does: a pure-ASGI
middleware leaves the outcome in the request's state (`request_state.AUTH`: a `Principal`, the
`ApiException` that explains why not, or nothing when no credentials were sent), and the
`CurrentPrincipal` dependency only reads it. Routes that do not depend on it ignore it."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.dependencies import Authenticator
from app.core import request_state
from app.core.errors import ApiException


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Built by the composition root in the lifespan, after the middleware stack.
            authenticator: Authenticator = scope["app"].state.authenticator
            state = scope.setdefault("state", {})
            try:
                state[request_state.AUTH] = await authenticator.authenticate(scope["headers"])
            except ApiException as error:  # an outage while checking a key included
                state[request_state.AUTH] = error
        await self.app(scope, receive, send)
