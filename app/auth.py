"""Who is calling: the one auth dependency and the typed principal it returns.

Rules (also in the README):
- `X-API-Key: sk_...` authenticates an organization API key; `Authorization: Bearer <JWT>`
  authenticates a dashboard user. Exactly one of the two may be sent; both at once is a 401,
  because the two could name different organizations.
- Every failure is the same 401 `UNAUTHORIZED` with `WWW-Authenticate: Bearer`; the message says
  what to fix but never echoes the credential.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from fastapi import Request
from jwt.types import Options

from app.api_keys import KEY_PREFIX, find_active_key, hash_key
from app.config import HMAC_ALGORITHMS, Settings
from app.errors import RateLimited, Unauthorized
from app.state import AppState, app_state
from app.ttl_cache import TtlCache

logger = logging.getLogger("app.auth")

# The contract's security schemes, published in /openapi.json (app/main.py). They are not
# FastAPI Security dependencies: resolving those on every request cost a tenth of the request
# time (see docs/performance.md), and the headers are parsed below anyway, so that each
# malformed shape gets its own clear message.
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "Dashboard access token. Send as Authorization: Bearer <token>.",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "Organization API key (sk_...). Send as X-API-Key: <key>.",
    },
}
SECURITY_REQUIREMENT: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]

# Far above any real token or key; anything longer is rejected before parsing.
MAX_CREDENTIAL_LENGTH = 8192
_JWKS_MIN_REFRESH_INTERVAL = 30.0
# Distinct tokens remembered per worker; beyond it the least recently used are verified again.
VERIFIED_TOKENS_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    organization_id: uuid.UUID
    # The dashboard user's `sub`, or the API key's id.
    actor_id: str
    method: Literal["api_key", "jwt"]
    # Visible prefix of the API key, for logs; None for JWTs.
    key_prefix: str | None = None

    @property
    def rate_limit_key(self) -> str:
        return f"{self.method}:{self.organization_id}:{self.actor_id}"


@dataclass(frozen=True, slots=True)
class _SigningKey:
    key: jwt.PyJWK
    declared_alg: str | None


class JwksCache:
    """Public keys from JWT_JWKS_URL, fetched at start and refreshed in the background.

    Requests only read the in-memory map; an unknown `kid` schedules an early refresh (at most
    one per 30 s) but is itself rejected, so a request never waits on the JWKS endpoint.
    """

    def __init__(self, url: str, timeout: float, refresh_seconds: int) -> None:
        self._url = url
        self._timeout = timeout
        self._refresh_seconds = refresh_seconds
        self._keys: dict[str, _SigningKey] = {}
        self._wake = asyncio.Event()
        self._last_fetch = 0.0

    def get(self, kid: str) -> _SigningKey | None:
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._last_fetch > _JWKS_MIN_REFRESH_INTERVAL:
            self._wake.set()
        return key

    async def refresh(self) -> None:
        import httpx  # only services configured with a JWKS pay for importing it

        self._last_fetch = time.monotonic()
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            response = await client.get(self._url)
            response.raise_for_status()
            document = response.json()
        keys: dict[str, _SigningKey] = {}
        for entry in document.get("keys", []):
            kid = entry.get("kid")
            if not isinstance(kid, str) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = _SigningKey(jwt.PyJWK(entry), entry.get("alg"))
            except jwt.PyJWTError:
                logger.warning("skipping unusable JWKS key kid=%s", kid)
        self._keys = keys
        logger.info("loaded %d JWKS signing keys", len(keys))

    async def try_refresh(self) -> None:
        import httpx

        try:
            await self.refresh()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("JWKS refresh failed: %s", type(exc).__name__)

    async def run(self) -> None:
        """Refresh every `refresh_seconds`, or sooner when an unknown kid was seen."""
        while True:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._refresh_seconds)
                await asyncio.sleep(
                    max(0.0, self._last_fetch + _JWKS_MIN_REFRESH_INTERVAL - time.monotonic())
                )
            except TimeoutError:
                pass
            await self.try_refresh()


class JwtVerifier:
    def __init__(self, settings: Settings, jwks: JwksCache | None) -> None:
        self._algorithms = frozenset(settings.jwt_algorithms)
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._jwks = jwks
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._org_claim = settings.jwt_org_claim
        self._leeway = settings.jwt_leeway_seconds
        self._cache_seconds = settings.jwt_cache_seconds
        self._verified: TtlCache[str, Principal] = TtlCache(VERIFIED_TOKENS_CACHED)
        required = ["exp", "sub"]
        if self._issuer is not None:
            required.append("iss")
        if self._audience is not None:
            required.append("aud")
        self._options: Options = {
            "require": required,
            "verify_aud": self._audience is not None,
        }

    def _key_for(self, header: dict[str, Any]) -> tuple[str, Any]:
        alg = header.get("alg")
        # The algorithm allow-list comes from settings; the token's header only picks among it.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthorized("The bearer token's signing algorithm is not accepted.")
        if alg in HMAC_ALGORITHMS:
            if self._secret is None:
                raise Unauthorized("This server does not accept HMAC-signed tokens.")
            return alg, self._secret
        kid = header.get("kid")
        signing_key = self._jwks.get(kid) if self._jwks and isinstance(kid, str) else None
        if signing_key is None:
            raise Unauthorized("The bearer token's signing key is not known.")
        if signing_key.declared_alg not in (None, alg):
            raise Unauthorized("The bearer token's signing algorithm is not accepted.")
        return alg, signing_key.key.key

    def verify(self, token: str) -> Principal:
        """The token's principal. A verified token is remembered for `JWT_CACHE_SECONDS`, never
        past its own `exp`: the dashboard sends the same token on every call, and checking its
        signature again each time was most of what a JWT request cost over an API-key one."""
        principal = self._verified.get(token)
        if principal is None:
            principal, expires = self._verify(token)
            lifetime = min(self._cache_seconds, expires - time.time())
            self._verified.put(token, principal, lifetime)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token is not a well-formed JWT.") from None
        alg, key = self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The bearer token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The bearer token is not valid yet.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token is not valid.") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("The bearer token has no subject.")
        org = claims.get(self._org_claim)
        try:
            organization_id = uuid.UUID(org) if isinstance(org, str) else None
        except ValueError:
            organization_id = None
        if organization_id is None:
            raise Unauthorized(f"The bearer token has no valid '{self._org_claim}' claim.")
        principal = Principal(organization_id=organization_id, actor_id=subject, method="jwt")
        # `exp` is required and was checked to be a number by the decode above.
        return principal, float(claims["exp"])


def _single_header(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise Unauthorized(f"Send the {name} header once.")
    if not values:
        return None
    if len(values[0]) > MAX_CREDENTIAL_LENGTH:
        raise Unauthorized(f"The {name} header is too long.")
    return values[0].strip()


async def _authenticate_api_key(state: AppState, key: str) -> Principal:
    if not key.startswith(KEY_PREFIX) or not key.isascii():
        raise Unauthorized("The API key is not valid.")

    key_hash = hash_key(key)
    if state.api_key_cache is not None:
        owner = await state.api_key_cache.owner(key_hash)
    else:
        owner = await find_active_key(state.db, key_hash)
    if owner is None:
        raise Unauthorized("The API key is not valid, has expired or was revoked.")
    return Principal(
        organization_id=owner.organization_id,
        actor_id=str(owner.key_id),
        method="api_key",
        key_prefix=owner.prefix,
    )


def _bearer_token(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise Unauthorized("The Authorization header must use the Bearer scheme.")
    if not token:
        raise Unauthorized("The Authorization header has no token.")
    if token.startswith(KEY_PREFIX):
        raise Unauthorized("API keys go in the X-API-Key header, not in Authorization.")
    return token


async def authenticate(request: Request) -> Principal:
    authorization = _single_header(request, "Authorization")
    api_key = _single_header(request, "X-API-Key")
    if authorization and api_key:
        raise Unauthorized("Send either Authorization: Bearer or X-API-Key, not both.")
    state = app_state(request)
    if api_key:
        principal = await _authenticate_api_key(state, api_key)
    elif authorization:
        principal = state.jwt_verifier.verify(_bearer_token(authorization))
    else:
        raise Unauthorized("Authenticate with X-API-Key: sk_... or Authorization: Bearer <JWT>.")
    request.state.principal = principal
    if state.rate_limiter is not None:
        wait = state.rate_limiter.retry_after(principal.rate_limit_key)
        if wait is not None:
            raise RateLimited(wait)
    return principal
