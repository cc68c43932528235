"""The long-lived objects one app instance holds, made in the lifespan and read by dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from app.api_keys import ApiKeyCache
from app.config import Settings
from app.db import Database
from app.rate_limit import RateLimiter

if TYPE_CHECKING:
    from app.auth import JwtVerifier
    from app.storage import DownloadSigner


@dataclass(slots=True)
class AppState:
    settings: Settings
    db: Database
    jwt_verifier: JwtVerifier
    signer: DownloadSigner | None
    rate_limiter: RateLimiter | None
    api_key_cache: ApiKeyCache | None
    # Set when SIGTERM arrives: /readyz answers 503 so load balancers stop routing here.
    draining: bool = False


def app_state(request: Request) -> AppState:
    state = request.app.state.orbit
    assert isinstance(state, AppState)
    return state
