"""Dashboard JWTs: the verifier (algorithm allow-list from settings, required claims, issuer
and audience when configured, a cache of verified tokens) and the JWKS it takes keys from."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.types import Options

from app.auth.principal import Principal
from app.core.errors import Unauthorized
from app.core.settings import HMAC_ALGORITHMS, Settings
from app.core.ttl_cache import TtlCache

logger = logging.getLogger("app.auth")

_JWKS_MIN_REFRESH_INTERVAL = 30.0
# Distinct tokens remembered per worker; beyond it the least recently used are verified again.
VERIFIED_TOKENS_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class _SigningKey:
    key: jwt.PyJWK
    declared_alg: str | None


class MalformedJwks(ValueError):
    """The JWKS document is not {"keys": [...]} with at least one usable signing key."""


def parse_jwks(document: object) -> dict[str, _SigningKey]:
    """The usable signing keys of a JWKS document, by kid. Entries that are not keys (not an
    object, no string kid, `use` other than sig, a key PyJWT cannot load) are skipped with a
    warning; a document without any usable key raises MalformedJwks, so that a broken
    publication never empties the keys in use."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise MalformedJwks("not a JWKS document")
    keys: dict[str, _SigningKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            logger.warning("skipping a JWKS entry that is not an object")
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or entry.get("use", "sig") != "sig":
            continue
        alg = entry.get("alg")
        try:
            keys[kid] = _SigningKey(jwt.PyJWK(entry), alg if isinstance(alg, str) else None)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            logger.warning("skipping unusable JWKS key kid=%s", kid[:64])
    if not keys:
        raise MalformedJwks("no usable signing key")
    return keys


class JwksCache:
    """Public keys from JWT_JWKS_URL, fetched at start and refreshed in the background.

    Requests only read the in-memory map; an unknown `kid` schedules an early refresh (at most
    one per 30 s) but is itself rejected, so a request never waits on the JWKS endpoint, and a
    newly published key works within about 30 s. A refresh that fails (unreachable, not JSON,
    not a JWKS, no usable key) keeps the last good keys, logs a warning and is retried with
    backoff (1 s, doubling, up to the refresh interval); nothing stops the refresh loop.
    """

    def __init__(
        self,
        url: str,
        timeout: float,
        refresh_seconds: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._keys: dict[str, _SigningKey] = {}
        self._wake = asyncio.Event()
        self._last_fetch = -_JWKS_MIN_REFRESH_INTERVAL
        self._failures = 0

    def get(self, kid: str) -> _SigningKey | None:
        key = self._keys.get(kid)
        if key is None and self._monotonic() - self._last_fetch >= _JWKS_MIN_REFRESH_INTERVAL:
            self._wake.set()
        return key

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @property
    def refresh_requested(self) -> bool:
        """An unknown kid asked for an early refresh that the loop has not begun yet. Lets a
        test see that a lookup did not ask for one, without waiting to see none happen."""
        return self._wake.is_set()

    async def refresh(self) -> None:
        """Fetch and load the document; raises on any failure, keeping the keys in use."""
        import httpx  # only services configured with a JWKS pay for importing it

        self._last_fetch = self._monotonic()
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            response = await client.get(self._url)
            response.raise_for_status()
            document = response.json()
        self._keys = parse_jwks(document)
        logger.info("loaded %d JWKS signing keys", len(self._keys))

    async def try_refresh(self) -> bool:
        """Refresh; on any failure log a warning, keep the last good keys, return False."""
        try:
            await self.refresh()
        except Exception as exc:  # whatever the endpoint sends, the loop must go on
            self._failures += 1
            logger.warning(
                "JWKS refresh failed (%s); keeping %d known keys",
                type(exc).__name__,
                len(self._keys),
            )
            return False
        self._failures = 0
        return True

    def next_wait(self) -> float:
        """Seconds until the next scheduled refresh: the interval, or the backoff after
        failures (1 s, 2 s, 4 s, ... up to the interval)."""
        if self._failures == 0:
            return self._refresh_seconds
        return float(min(self._refresh_seconds, 2 ** min(self._failures - 1, 16)))

    async def run(self) -> None:
        """Refresh on schedule, or sooner (at most once per 30 s) when an unknown kid was seen."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.next_wait())
                await asyncio.sleep(
                    max(0.0, self._last_fetch + _JWKS_MIN_REFRESH_INTERVAL - self._monotonic())
                )
            except TimeoutError:
                pass
            # Cleared here, not before waiting: a wake-up asked for meanwhile is not lost.
            self._wake.clear()
            await self.try_refresh()


class JwtVerifier:
    def __init__(
        self,
        settings: Settings,
        jwks: JwksCache | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._algorithms = frozenset(settings.jwt_algorithms)
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._jwks = jwks
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._org_claim = settings.jwt_org_claim
        self._leeway = settings.jwt_leeway_seconds
        self._cache_seconds = settings.jwt_cache_seconds
        self._wall_clock = wall_clock
        self._verified: TtlCache[str, Principal] = TtlCache(VERIFIED_TOKENS_CACHED, monotonic)
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
            lifetime = min(self._cache_seconds, expires - self._wall_clock())
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
