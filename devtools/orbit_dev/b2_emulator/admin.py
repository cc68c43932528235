"""Admin endpoints for tests: read and clear the request log, inject faults into `/b2api/`
calls, expire every account token, move the emulator's clock forward (to expire tokens without
sleeping). Each needs the emulator's application key (`Authorization: Bearer <key>`): the
emulator may listen where others can reach it (compose publishes its port). `/_emulator/health`
needs nothing and says only that it is up."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from orbit_dev.b2_emulator.state import B2Failure, Faults, emulator_state, json_body


def _require_key(request: Request) -> None:
    given = request.headers.get("Authorization", "").encode("latin-1", "replace")
    # The key it started with, even once deleted: the tests' handle on it.
    expected = f"Bearer {request.app.state.admin_key}".encode()
    if not hmac.compare_digest(given, expected):
        raise B2Failure(401, "unauthorized", "The emulator's admin endpoints need its key.")


health_router = APIRouter(prefix="/_emulator")
router = APIRouter(prefix="/_emulator", dependencies=[Depends(_require_key)])


@health_router.get("/health")
async def health() -> Response:
    return Response(status_code=204)


@router.get("/requests")
async def request_log(request: Request) -> Response:
    state = emulator_state(request)
    return JSONResponse(list(state.request_log))


@router.delete("/requests")
async def clear_request_log(request: Request) -> Response:
    state = emulator_state(request)
    state.request_log.clear()
    return Response(status_code=204)


@router.post("/faults")
async def set_faults(request: Request) -> Response:
    state = emulator_state(request)
    body = await json_body(request)
    state.faults = Faults(
        status=body.get("status"),
        delay_seconds=float(body.get("delaySeconds", 0)),
        malformed=bool(body.get("malformed", False)),
        apis=body.get("apis"),
        remaining=body.get("count"),
        retry_after=body.get("retryAfter"),
        body=body.get("body"),
    )
    return Response(status_code=204)


@router.delete("/faults")
async def clear_faults(request: Request) -> Response:
    state = emulator_state(request)
    state.faults = Faults()
    return Response(status_code=204)


@router.post("/keys")
async def add_key(request: Request) -> Response:
    """Another application key (a rotation): {"keyId": ..., "key": ...}."""
    state = emulator_state(request)
    body = await json_body(request)
    key_id, key = body.get("keyId"), body.get("key")
    if not (isinstance(key_id, str) and key_id and isinstance(key, str) and key):
        raise B2Failure(400, "bad_request", "keyId and key are required.")
    state.other_keys[key_id] = key
    return Response(status_code=204)


@router.delete("/keys/{key_id}")
async def delete_key(key_id: str, request: Request) -> Response:
    emulator_state(request).delete_key(key_id)
    return Response(status_code=204)


@router.get("/grants/{token}")
async def grant_of(token: str, request: Request) -> Response:
    """Which application key asked for a download authorization."""
    grant = emulator_state(request).download_grants.get(token)
    if grant is None:
        raise B2Failure(404, "not_found", "No such download authorization.")
    return JSONResponse({"keyId": grant.key_id, "prefix": grant.prefix})


@router.post("/expire-account-tokens")
async def expire_account_tokens(request: Request) -> Response:
    state = emulator_state(request)
    for token in state.account_tokens:
        state.account_tokens[token] = state.now()
    return Response(status_code=204)


@router.post("/clock")
async def advance_clock(request: Request) -> Response:
    state = emulator_state(request)
    body = await json_body(request)
    state.clock_offset += float(body.get("advanceSeconds", 0))
    return JSONResponse({"offsetSeconds": state.clock_offset})
