"""Dashboard JWTs: the verifier (algorithm allow-list from settings, required claims, issuer
and audience when configured, a cache of verified tokens) and the JWKS it takes keys from."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.types import Options

from app.core.errors import Unauthorized
from app.core.principal import Principal
from app.core.settings import HMAC_ALGORITHMS, Settings
from app.core.ttl_cache import TtlCache

logger = logging.getLogger("app.auth")

_JWKS_MIN_REFRESH_INTERVAL = 30.0
# The key type (and EC curve) each algorithm verifies with. PyJWT, handed a key of another
# type, raises TypeError or ValueError rather than a PyJWTError; the mismatch is a 401 here.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
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


def _verifies(alg: str, key: jwt.PyJWK) -> bool:
    """Whether `key` is of the type (and curve) that `alg` verifies with."""
    if key.key_type != _KEY_TYPES.get(alg[:2]):
        return False
    curve = _EC_CURVES.get(alg)
    return curve is None or getattr(getattr(key.key, "curve", None), "name", None) == curve


@dataclass(frozen=True, slots=True)
class _HmacSecrets:
    """JWT_SECRET and JWT_PREVIOUS_SECRETS, each with a fingerprint (a digest, never logged)
    that cached verifications keep, so dropping a secret drops what it verified."""

    current: tuple[str, str] | None
    previous: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, settings: Settings) -> _HmacSecrets:
        def fingerprinted(secret: str) -> tuple[str, str]:
            return hashlib.sha256(secret.encode()).hexdigest()[:16], secret

        current = settings.jwt_secret
        return cls(
            fingerprinted(current.get_secret_value()) if current is not None else None,
            tuple(fingerprinted(p.get_secret_value()) for p in settings.jwt_previous_secrets),
        )

    def candidates(self) -> tuple[tuple[str, str], ...]:
        """The current secret first: the steady state verifies with one HMAC."""
        return ((self.current,) if self.current else ()) + self.previous

    def accepts(self, fingerprint: str) -> bool:
        return fingerprint == _JWKS or any(fingerprint == f for f, _ in self.candidates())

    def is_previous(self, fingerprint: str) -> bool:
        return any(fingerprint == f for f, _ in self.previous)


# What a token verified with a JWKS key is remembered with (keys removed from the JWKS stop
# working within JWT_JWKS_REFRESH_SECONDS + JWT_CACHE_SECONDS, as before).
_JWKS = "jwks"


class JwtVerifier:
    def __init__(
        self,
        settings: Settings,
        jwks: JwksCache | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_previous_secret: Callable[[], None] | None = None,
    ) -> None:
        self._algorithms = frozenset(settings.jwt_algorithms)
        self._secrets = _HmacSecrets.of(settings)
        self._on_previous_secret = on_previous_secret
        self._jwks = jwks
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._org_claim = settings.jwt_org_claim
        self._leeway = settings.jwt_leeway_seconds
        self._cache_seconds = settings.jwt_cache_seconds
        self._wall_clock = wall_clock
        # A verified token's principal and the fingerprint of what verified it.
        self._verified: TtlCache[str, tuple[Principal, str]] = TtlCache(
            VERIFIED_TOKENS_CACHED, monotonic
        )
        required = ["exp", "sub"]
        if self._issuer is not None:
            required.append("iss")
        if self._audience is not None:
            required.append("aud")
        self._options: Options = {
            "require": required,
            "verify_aud": self._audience is not None,
        }

    def rotate(self, settings: Settings) -> None:
        """New HMAC secrets (a reload): tokens verified with a secret no longer listed, cached
        ones included, are verified again at their next use, and refused."""
        self._secrets = _HmacSecrets.of(settings)

    def _keys_for(self, header: dict[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """The token's algorithm and the (fingerprint, key) pairs that may have signed it."""
        alg = header.get("alg")
        # The algorithm allow-list comes from settings; the token's header only picks among it.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthorized("The bearer token's signing algorithm is not accepted.")
        if alg in HMAC_ALGORITHMS:
            candidates = self._secrets.candidates()
            if not candidates:
                raise Unauthorized("This server does not accept HMAC-signed tokens.")
            return alg, candidates
        kid = header.get("kid")
        signing_key = self._jwks.get(kid) if self._jwks and isinstance(kid, str) else None
        if signing_key is None:
            raise Unauthorized("The bearer token's signing key is not known.")
        if signing_key.declared_alg not in (None, alg) or not _verifies(alg, signing_key.key):
            raise Unauthorized("The bearer token's signing algorithm is not accepted.")
        return alg, ((_JWKS, signing_key.key.key),)

    def verify(self, token: str) -> Principal:
        """The token's principal. A verified token is remembered for `JWT_CACHE_SECONDS`, never
        past its own `exp`: the dashboard sends the same token on every call, and checking its
        signature again each time was most of what a JWT request cost over an API-key one."""
        secrets = self._secrets
        cached = self._verified.get(token)
        if cached is not None and secrets.accepts(cached[1]):
            principal, verified_by = cached
        else:
            principal, verified_by, expires = self._verify(token)
            lifetime = min(self._cache_seconds, expires - self._wall_clock())
            self._verified.put(token, (principal, verified_by), lifetime)
        if self._on_previous_secret is not None and secrets.is_previous(verified_by):
            self._on_previous_secret()
        return principal

    def _verify(self, token: str) -> tuple[Principal, str, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token is not a well-formed JWT.") from None
        alg, keys = self._keys_for(header)
        try:
            claims, verified_by = self._decode(token, alg, keys)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The bearer token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The bearer token is not valid yet.") from None
        except (jwt.PyJWTError, TypeError, ValueError):
            # TypeError/ValueError: PyJWT met a key it cannot use for this token (a mismatch
            # `_verifies` did not foresee): no valid signature either way.
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
        return principal, verified_by, float(claims["exp"])

    def _decode(
        self, token: str, alg: str, keys: tuple[tuple[str, Any], ...]
    ) -> tuple[dict[str, Any], str]:
        """The verified claims and the fingerprint of the key that verified them; a signature
        that none of `keys` verifies raises the last InvalidSignatureError."""
        for index, (fingerprint, key) in enumerate(keys):
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
            except jwt.InvalidSignatureError:
                if index == len(keys) - 1:
                    raise
                continue
            return claims, fingerprint
        raise jwt.InvalidSignatureError
