"""A small Backblaze B2 native-API emulator. DEVELOPMENT AND TESTS ONLY: it keeps files in
memory and has a single account.

b2sdk talks to it over real HTTP (`B2_REALM=http://127.0.0.1:PORT`). Modules:
`native_api` (the `/b2api/` calls), `downloads` (files by name, token rules), `cors` (bucket
rules), `admin` (`/_emulator/`), `state` (the in-memory world). It implements what this
service and its tooling use: account authorization, bucket listing and creation, upload,
download by name, and `b2_get_download_authorization`, with B2's download-token rules: a token
works only in its bucket, for names starting with its prefix, until it expires, and only with
the exact `b2ContentDisposition` it was minted with. Buckets carry B2 CORS rules (set with
`b2_update_bucket`, or `--cors-origin` on the command line), and downloads answer browsers as
B2 does: preflights matched against the rules, `Access-Control-Allow-Origin` and the rule's
exposed headers on matching requests, nothing for other origins.

Admin endpoints under `/_emulator/` (with `Authorization: Bearer <application key>`) let
tests read the request log (the last 10,000 calls), move the emulator's clock forward (to
expire tokens without sleeping), expire every account token, and inject faults into the B2
API (`POST /_emulator/faults {"status": 503, "delaySeconds": 5, "malformed": true,
"apis": ["b2_get_download_authorization"], "count": 3, "retryAfter": 120, "body": []}`,
`DELETE` to clear; `body` is answered with 200 instead of the real answer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from orbit_dev.b2_emulator import admin, downloads, native_api
from orbit_dev.b2_emulator.cors import dashboard_cors_rule
from orbit_dev.b2_emulator.state import B2Failure, EmulatorState, b2_error, emulator_state

__all__ = ["EmulatorState", "create_emulator", "dashboard_cors_rule"]


async def _on_failure(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, B2Failure)
    return b2_error(exc)


async def _log_and_inject_faults(request: Request, call_next: Any) -> Response:
    state = emulator_state(request)
    if not request.url.path.startswith("/_emulator/"):
        state.request_log.append(
            {"method": request.method, "path": request.url.path, "at": state.now()}
        )
    faults = state.faults
    if request.url.path.startswith("/b2api/") and faults.applies(request.url.path):
        if faults.remaining is not None:
            faults.remaining -= 1
        if faults.delay_seconds:
            await asyncio.sleep(faults.delay_seconds)
        if faults.malformed:
            return Response(b'{"accountId": "trunc', media_type="application/json")
        if faults.body is not None:
            return JSONResponse(faults.body)
        if faults.status:
            code = "too_many_requests" if faults.status == 429 else "injected_fault"
            return b2_error(B2Failure(faults.status, code, "Injected fault."), faults.retry_after)
    response: Response = await call_next(request)
    return response


def create_emulator(
    key_id: str,
    key: str,
    buckets: list[str] | None = None,
    public_url: str | None = None,
    cors_origins: list[str] | None = None,
) -> FastAPI:
    """`public_url` is the download base handed to clients, when they reach the emulator at
    another address than the API does (compose: `http://localhost:9000` vs `http://b2:9000`).
    `cors_origins` gives the buckets the download rule of docs/operations.md for those origins."""
    state = EmulatorState(key_id=key_id, key=key, public_url=public_url)
    rules = [dashboard_cors_rule(cors_origins)] if cors_origins else []
    for name in buckets or []:
        state.create_bucket(name, cors_rules=rules)
    app = FastAPI(title="B2 emulator (development only)", openapi_url=None, docs_url=None)
    app.state.emulator = state
    app.state.admin_key = key
    app.add_exception_handler(B2Failure, _on_failure)
    app.middleware("http")(_log_and_inject_faults)
    for module in (native_api, downloads, admin):
        app.include_router(module.router)
    app.include_router(admin.health_router)
    return app
