"""Who is calling: the one auth dependency (`CurrentPrincipal`) and the `Authenticator` behind it.

Rules (also in the README, "Authentication"):
- `X-API-Key: sk_...` authenticates an organization API key; `Authorization: Bearer <JWT>`
  authenticates a dashboard user. Exactly one of the two may be sent; both at once is a 401,
  because the two could name different organizations.
- Every failure is the same 401 `UNAUTHORIZED` with `WWW-Authenticate: Bearer`; the message says
  what to fix but never echoes the credential.
- Credentials are checked by `AuthenticationMiddleware` before routing; a route depending on
  `CurrentPrincipal` answers 401 before FastAPI validates its path, so an unauthenticated caller
  learns nothing, not even which ids are malformed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.api_keys import KEY_PREFIX, ApiKeyResolver, hash_key
from app.auth.jwt_verifier import JwtVerifier
from app.auth.rate_limit import RateLimiter
from app.core import request_state
from app.core.errors import RateLimited, Unauthorized
from app.core.principal import Principal

# The contract's security schemes, published in /openapi.json by `app.main`. They are not
# FastAPI Security dependencies: the headers are parsed below anyway, so that each malformed
# shape gets its own clear message, and the two extra dependencies would run on every request.
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


def _credential_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The Authorization and X-API-Key values (raw ASGI headers), each sent at most once."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in (b"authorization", b"x-api-key"):
            label = "Authorization" if name == b"authorization" else "X-API-Key"
            if name in found:
                raise Unauthorized(f"Send the {label} header once.")
            if len(value) > MAX_CREDENTIAL_LENGTH:
                raise Unauthorized(f"The {label} header is too long.")
            found[name] = value.decode("latin-1").strip()
    return found.get(b"authorization"), found.get(b"x-api-key")


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


class Authenticator:
    """Turns a request's credentials into a `Principal` (run by `AuthenticationMiddleware`), and
    applies the per-credential rate limit (run by the `CurrentPrincipal` dependency, so only
    routes that need a caller spend its allowance)."""

    def __init__(
        self, jwt_verifier: JwtVerifier, api_keys: ApiKeyResolver, rate_limiter: RateLimiter | None
    ) -> None:
        self._jwt_verifier = jwt_verifier
        self._api_keys = api_keys
        self.rate_limiter = rate_limiter

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal | None:
        """The caller, None when no credentials were sent; Unauthorized when they are wrong."""
        authorization, api_key = _credential_headers(headers)
        if authorization and api_key:
            raise Unauthorized("Send either Authorization: Bearer or X-API-Key, not both.")
        if api_key:
            return await self._api_key_principal(api_key)
        if authorization:
            return self._jwt_verifier.verify(_bearer_token(authorization))
        return None

    async def check_rate(self, principal: Principal) -> None:
        limiter = self.rate_limiter
        if limiter is not None:
            wait = await limiter.retry_after(principal.rate_limit_key)
            if wait is not None:
                raise RateLimited(wait)

    async def _api_key_principal(self, key: str) -> Principal:
        if not key.startswith(KEY_PREFIX) or not key.isascii():
            raise Unauthorized("The API key is not valid.")
        owner = await self._api_keys.owner(hash_key(key))
        if owner is None:
            raise Unauthorized("The API key is not valid, has expired or was revoked.")
        return Principal(
            organization_id=owner.organization_id,
            actor_id=str(owner.key_id),
            method="api_key",
            key_prefix=owner.prefix,
        )


async def current_principal(request: Request) -> Principal:
    """The caller `AuthenticationMiddleware` resolved for this request, rate-limited; 401 with
    the reason when there is none."""
    outcome = request.scope["state"].get(request_state.AUTH)
    if outcome is None:
        raise Unauthorized("Authenticate with X-API-Key: sk_... or Authorization: Bearer <JWT>.")
    if not isinstance(outcome, Principal):
        raise outcome
    authenticator: Authenticator = request.app.state.authenticator
    await authenticator.check_rate(outcome)
    return outcome


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
