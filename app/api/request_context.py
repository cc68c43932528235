"""The outermost middleware: the request id (in `scope["state"]` and the logging context), the
common response headers, one access line per request, and the request metrics callback."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.envelope import STATIC_HEADERS, choose_request_id
from app.core import request_state
from app.core.logs import current_request_id
from app.core.principal import Principal
from app.core.tracing import RequestAnnotator

access_log = logging.getLogger("app.access")

# (route template or None, method, status, seconds): how metrics learn of each request.
RequestObserver = Callable[[str | None, str, int, float], None]

# Tracing off: nothing to add to a span (reentrant, so one serves every request).
_UNTRACED = nullcontext(lambda: None)

_STATIC_RAW = [(k.lower().encode(), v.encode()) for k, v in STATIC_HEADERS.items()]


class RequestContextMiddleware:
    """Assigns the request id before anything else runs and stamps the common headers.

    Pure ASGI on the raw header lists (no Request/MutableHeaders objects): it runs on every
    request, and the profile showed the object-based version at several percent of it.
    """

    def __init__(
        self,
        app: ASGIApp,
        observe: RequestObserver | None = None,
        annotate: RequestAnnotator | None = None,
    ) -> None:
        self.app = app
        self.observe = observe
        # Only when tracing is on: the request's span learns the request id and the caller.
        self.annotate = annotate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                raw_id = value.decode("latin-1")
                break
        rid = choose_request_id(raw_id)
        state = scope.setdefault("state", {})
        state[request_state.REQUEST_ID] = rid
        context_token = current_request_id.set(rid)
        extra = [*_STATIC_RAW, (b"x-request-id", rid.encode("latin-1"))]
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped to the 500 handler
        tracing = self.annotate(state) if self.annotate is not None else _UNTRACED

        with tracing as on_response:

            async def send_with_headers(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    on_response()
                    headers = list(message.get("headers", ()))
                    present = {name.lower() for name, _ in headers}
                    message["headers"] = headers + [i for i in extra if i[0] not in present]
                await send(message)

            try:
                await self.app(scope, receive, send_with_headers)
            finally:
                seconds = time.perf_counter() - started
                _log_request(scope, state, status, seconds)
                if self.observe is not None:
                    route = getattr(scope.get("route"), "path", None)
                    self.observe(route, scope["method"], status, seconds)
                current_request_id.reset(context_token)


def _log_request(scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
    """One structured line per request: who, what, how it ended, whether B2 was called."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    route = scope.get("route")
    # Who called, never with what.
    principal = state.get(request_state.AUTH)
    if not isinstance(principal, Principal):
        principal = None
    is_key = principal is not None and principal.method == "api_key"
    fields = {
        "request_id": state.get(request_state.REQUEST_ID),
        "method": scope.get("method"),
        "route": getattr(route, "path", None),
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "organization_id": getattr(principal, "organization_id", None),
        "auth": getattr(principal, "method", None),
        # The key's id and visible prefix only, never the key.
        "api_key_id": getattr(principal, "actor_id", None) if is_key else None,
        "api_key_prefix": getattr(principal, "key_prefix", None),
        "b2": state.get(request_state.SIGNING),
        "error_code": state.get(request_state.ERROR_CODE),
    }
    access_log.info(
        "%s %s %s", scope.get("method"), fields["route"] or "-", status, extra={"fields": fields}
    )
