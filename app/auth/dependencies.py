"""Who is calling: the one auth dependency (`CurrentPrincipal`) and the `Authenticator` behind it.

Rules (also in the README):
- `X-API-Key: sk_...` authenticates an organization API key; `Authorization: Bearer <JWT>`
  authenticates a dashboard user. Exactly one of the two may be sent; both at once is a 401,
  because the two could name different organizations.
- Every failure is the same 401 `UNAUTHORIZED` with `WWW-Authenticate: Bearer`; the message says
  what to fix but never echoes the credential.
- A route depending on `CurrentPrincipal` authenticates before FastAPI validates its path, so an
  unauthenticated caller learns nothing, not even which ids are malformed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.api_keys import KEY_PREFIX, ApiKeyResolver, hash_key
from app.auth.jwt_verifier import JwtVerifier
from app.auth.principal import Principal
from app.auth.rate_limit import RateLimiter
from app.core.errors import RateLimited, Unauthorized

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


def _single_header(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise Unauthorized(f"Send the {name} header once.")
    if not values:
        return None
    if len(values[0]) > MAX_CREDENTIAL_LENGTH:
        raise Unauthorized(f"The {name} header is too long.")
    return values[0].strip()


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
    """Turns a request's credentials into a `Principal`, then applies the rate limit."""

    def __init__(
        self, jwt_verifier: JwtVerifier, api_keys: ApiKeyResolver, rate_limiter: RateLimiter | None
    ) -> None:
        self._jwt_verifier = jwt_verifier
        self._api_keys = api_keys
        self._rate_limiter = rate_limiter

    async def authenticate(self, request: Request) -> Principal:
        authorization = _single_header(request, "Authorization")
        api_key = _single_header(request, "X-API-Key")
        if authorization and api_key:
            raise Unauthorized("Send either Authorization: Bearer or X-API-Key, not both.")
        if api_key:
            principal = await self._api_key_principal(api_key)
        elif authorization:
            principal = self._jwt_verifier.verify(_bearer_token(authorization))
        else:
            raise Unauthorized(
                "Authenticate with X-API-Key: sk_... or Authorization: Bearer <JWT>."
            )
        # For the access log: who called, never with what.
        request.state.principal = principal
        if self._rate_limiter is not None:
            wait = await self._rate_limiter.retry_after(principal.rate_limit_key)
            if wait is not None:
                raise RateLimited(wait)
        return principal

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
    # Set by the composition root (app.main); read directly rather than through a second
    # dependency, which FastAPI would resolve on every request.
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(request)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
