"""The JWKS never takes the service down: malformed or unreachable documents at start and later
keep the last good keys and the refresh loop alive; a newly published key works within the
early-refresh interval (30 s); a removed key stops working within JWT_JWKS_REFRESH_SECONDS +
JWT_CACHE_SECONDS. The loop runs on an injected clock: no test waits for a timer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth.jwt_verifier import JwksCache, JwtVerifier
from app.core.errors import Unauthorized
from tests.support.app import MakeSettings, bearer, serve
from tests.support.assertions import assert_unauthorized
from tests.support.jwks import Jwks, serve_jwks
from tests.support.waiting import wait_until
from tests.support.world import Tenant, World

ISSUER, AUDIENCE = "https://auth.orbit.test/", "orbit-dashboard"
MALFORMED: list[Any] = [
    {"keys": None},
    [],
    {"keys": [1, "x", None]},
    {"keys": {}},
    "just a string",
    {"keys": [{"kid": "k", "kty": "RSA", "n": "???", "e": "AQAB"}]},
    b"<html>not json</html>",
]


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    with serve_jwks() as keys:
        yield keys


def rs256(jwks: Jwks, org: uuid.UUID, kid: str, key: rsa.RSAPrivateKey | None = None) -> str:
    now = int(time.time())
    claims = {
        "sub": "user-1",
        "org_id": str(org),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, key or jwks.rsa, algorithm="RS256", headers={"kid": kid})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountedJwksCache(JwksCache):
    """The cache, keeping the outcome of every refresh it finishes: a test waits for the next
    one to finish, then looks at the state it left."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: list[bool] = []

    async def try_refresh(self) -> bool:
        loaded = await super().try_refresh()
        self.outcomes.append(loaded)
        return loaded


# A refresh is a few turns of the loop and one local HTTP round trip.
REFRESH_BOUND = 5.0


@pytest.mark.parametrize("document", MALFORMED, ids=range(len(MALFORMED)))
async def test_a_malformed_jwks_at_start_does_not_stop_the_service(
    make_settings: MakeSettings, jwks: Jwks, world: World, tenant: Tenant, document: Any
) -> None:
    jwks.document = document
    settings = make_settings(
        jwt_algorithms="HS256,RS256",
        jwt_jwks_url=jwks.url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    async with serve(settings) as client:
        path = tenant.path(uuid.uuid4())
        hs256 = world.jwt(tenant.org, iss=ISSUER, aud=AUDIENCE)
        assert (await client.get(path, headers=bearer(hs256))).status_code == 404
        token = rs256(jwks, tenant.org, "rsa-1")
        assert_unauthorized(await client.get(path, headers=bearer(token)))
        assert (await client.get("/readyz")).status_code == 200


async def test_malformed_documents_later_keep_the_keys_and_the_loop(jwks: Jwks) -> None:
    clock = Clock()
    cache = CountedJwksCache(jwks.url, 2.0, 300, monotonic=clock)
    assert await cache.try_refresh()
    loop = asyncio.create_task(cache.run())
    try:
        for document in MALFORMED:
            jwks.document = document
            fetches, finished = jwks.fetches, len(cache.outcomes)
            clock.now += 30
            assert cache.get("unknown-kid") is None
            assert cache.refresh_requested
            await wait_until(
                lambda n=finished: len(cache.outcomes) > n,
                within=REFRESH_BOUND,
                what=f"the loop finished the refresh asked for ({document!r})",
            )
            assert jwks.fetches > fetches
            assert cache.outcomes[-1] is False, document
            # The loop task ran on to its next wait in the same step that finished the
            # refresh: had the refresh broken it, it would be done by now.
            assert not loop.done(), loop
            assert cache.kids == {"rsa-1", "ec-1"}, document
        # And it goes on refreshing: a good document is loaded at the next early refresh.
        jwks.document = {"keys": [jwks.rsa_jwk("rsa-1"), jwks.ec_jwk("ec-1"), jwks.rsa_jwk("new")]}
        clock.now += 30
        assert cache.get("new") is None
        await wait_until(
            lambda: "new" in cache.kids,
            within=REFRESH_BOUND,
            what="the loop loaded a good document after the malformed ones",
        )
    finally:
        loop.cancel()


async def test_failed_refreshes_back_off_then_return_to_the_interval(jwks: Jwks) -> None:
    cache = JwksCache(jwks.url, 2.0, 300, monotonic=Clock())
    jwks.document = {"keys": None}
    waits = []
    for _ in range(11):
        assert not await cache.try_refresh()
        waits.append(cache.next_wait())
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    jwks.document = {"keys": [jwks.rsa_jwk("rsa-1")]}
    assert await cache.try_refresh()
    assert cache.next_wait() == 300


async def test_an_unreachable_jwks_keeps_the_keys(jwks: Jwks) -> None:
    from tests.support.processes import free_port

    cache = JwksCache(jwks.url, 0.5, 300, monotonic=Clock())
    assert await cache.try_refresh()
    cache._url = f"http://127.0.0.1:{free_port()}/jwks.json"  # the endpoint gone
    assert not await cache.try_refresh()
    assert cache.kids == {"rsa-1", "ec-1"}


async def test_a_rotated_in_key_works_within_the_early_refresh_interval(
    make_settings: MakeSettings, jwks: Jwks
) -> None:
    """A token signed with a key published after the last fetch is refused at first (requests
    never wait for the JWKS) and schedules a refresh; once 30 s have passed since the last
    fetch, the key is loaded and the token works."""
    clock = Clock()
    settings = make_settings(
        jwt_algorithms="RS256",
        jwt_jwks_url=jwks.url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    cache = JwksCache(jwks.url, 2.0, 300, monotonic=clock)
    verifier = JwtVerifier(settings, cache)
    assert await cache.try_refresh()
    loop = asyncio.create_task(cache.run())
    try:
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwks.document = {"keys": [jwks.rsa_jwk("rsa-1"), jwks.rsa_jwk("rsa-2", new_key)]}
        token = rs256(jwks, uuid.uuid4(), "rsa-2", new_key)
        clock.now += 10
        with pytest.raises(Unauthorized):
            verifier.verify(token)
        # Not before 30 s since the last fetch: the loop has nothing to do, and without a
        # request it waits the whole refresh interval (300 s).
        assert not cache.refresh_requested
        clock.now += 20
        with pytest.raises(Unauthorized):
            verifier.verify(token)
        assert cache.refresh_requested
        await wait_until(
            lambda: "rsa-2" in cache.kids,
            within=REFRESH_BOUND,
            what="the new key was loaded by the early refresh",
        )
        assert verifier.verify(token).actor_id == "user-1"
    finally:
        loop.cancel()


async def test_a_removed_key_stops_working_within_refresh_plus_cache_seconds(
    make_settings: MakeSettings, jwks: Jwks
) -> None:
    """After the refresh that drops it (at most JWT_JWKS_REFRESH_SECONDS after the removal),
    new tokens signed with the key are refused at once, and a token verified before stays
    trusted for at most JWT_CACHE_SECONDS more."""
    clock = Clock()
    settings = make_settings(
        jwt_algorithms="RS256",
        jwt_jwks_url=jwks.url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_cache_seconds=300,
    )
    cache = JwksCache(jwks.url, 2.0, settings.jwt_jwks_refresh_seconds, monotonic=clock)
    verifier = JwtVerifier(settings, cache, monotonic=clock)
    assert await cache.try_refresh()
    org = uuid.uuid4()
    seen = rs256(jwks, org, "rsa-1")
    verifier.verify(seen)
    jwks.document = {"keys": [jwks.ec_jwk("ec-1")]}
    assert await cache.try_refresh()  # the scheduled refresh
    with pytest.raises(Unauthorized):
        verifier.verify(rs256(jwks, uuid.uuid4(), "rsa-1"))  # a token not seen before
    clock.now += settings.jwt_cache_seconds - 1
    verifier.verify(seen)
    clock.now += 1
    with pytest.raises(Unauthorized):
        verifier.verify(seen)
