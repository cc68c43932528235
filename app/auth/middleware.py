"""Resolves the caller once per request, before routing, as polar's server does: a pure-ASGI
middleware leaves the outcome in `scope["state"]["auth"]` (a `Principal`, the `ApiError` that
explains why not, or nothing when no credentials were sent), and the `CurrentPrincipal`
dependency only reads it. Routes that do not depend on it ignore the outcome."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.dependencies import Authenticator
from app.core.errors import ApiError

AUTH_STATE = "auth"


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Built by the composition root in the lifespan, after the middleware stack.
            authenticator: Authenticator = scope["app"].state.authenticator
            state = scope.setdefault("state", {})
            try:
                principal = await authenticator.authenticate(scope["headers"])
            except ApiError as error:  # an outage while checking a key included: raised later
                state[AUTH_STATE] = error
            else:
                state[AUTH_STATE] = principal
                if principal is not None:
                    # For the access log: who called, never with what.
                    state["principal"] = principal
        await self.app(scope, receive, send)
