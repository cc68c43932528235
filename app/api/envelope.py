"""The contract's envelope: `meta` for every response and the error body, and the headers every
response carries.

See `contract/get-stored-export.openapi.yaml`; names and nullability must not drift from it.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request

from app.core import request_state
from app.core.clock import utc_now

REQUEST_ID_HEADER = "X-Request-ID"
# Caller-chosen ids end up in logs and response headers: only a short, plain token is echoed,
# anything else (newlines, control characters, very long values) is replaced by our own id.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")

# Responses may carry a signed URL or describe a tenant's data: no cache may keep them.
STATIC_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class ApiMeta(BaseModel):
    timestamp: datetime
    request_id: str


class ApiError(BaseModel):
    code: str
    message: str
    details: Any = None


class ApiErrorResponse(BaseModel):
    error: ApiError
    meta: ApiMeta


def choose_request_id(raw: str | None) -> str:
    if raw is not None and _SANE_REQUEST_ID.fullmatch(raw):
        return raw
    return str(uuid.uuid4())


def request_id(request: Request) -> str:
    state = request.scope.setdefault("state", {})
    rid = state.get(request_state.REQUEST_ID)
    if rid is None:
        rid = state[request_state.REQUEST_ID] = choose_request_id(
            request.headers.get(REQUEST_ID_HEADER)
        )
    return str(rid)


def envelope_meta(request: Request) -> ApiMeta:
    return ApiMeta(timestamp=utc_now(), request_id=request_id(request))


def response_headers(request: Request) -> dict[str, str]:
    return {**STATIC_HEADERS, REQUEST_ID_HEADER: request_id(request)}
