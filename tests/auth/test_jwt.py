"""Dashboard JWTs: HS256 with JWT_SECRET, RS256/ES256 from a JWKS, and the usual attacks."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.app import MakeSettings, bearer, serve
from tests.support.assertions import assert_unauthorized
from tests.support.jwks import Jwks, serve_jwks
from tests.support.world import Tenant, World


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    with serve_jwks() as keys:
        yield keys


@pytest.fixture(scope="module")
async def jwks_client(make_settings: MakeSettings, jwks: Jwks) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        jwt_algorithms="HS256,RS256,ES256",
        jwt_jwks_url=jwks.url,
        jwt_issuer="https://auth.orbit.test/",
        jwt_audience="orbit-dashboard",
    )
    async with serve(settings) as client:
        yield client


def _claims(org: uuid.UUID, **extra: Any) -> dict[str, Any]:
    import time

    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(uuid.uuid4()),
        "org_id": str(org),
        "iat": now,
        "exp": now + 300,
        "iss": "https://auth.orbit.test/",
        "aud": "orbit-dashboard",
    }
    claims |= extra
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- HS256 with JWT_SECRET (default client: no iss/aud configured) ------------------------


@pytest.mark.parametrize(
    ("case", "token_kwargs"),
    [
        ("expired", {"lifetime": timedelta(minutes=-5)}),
        ("not yet valid", {"nbf": 4_000_000_000}),
        ("wrong secret", {"secret": "another-secret-0123456789abcdef0123456789"}),
        ("no org claim", {"org_id": None}),
        ("org claim not a uuid", {"org_id": "acme"}),
        ("no subject", {"sub": None}),
        ("empty subject", {"sub": ""}),
    ],
)
async def test_bad_hs256_tokens_are_401(
    client: httpx.AsyncClient, world: World, tenant: Tenant, case: str, token_kwargs: dict[str, Any]
) -> None:
    token_kwargs = dict(token_kwargs)
    org: Any = token_kwargs.pop("org_id", tenant.org)
    token = world.jwt(org, **token_kwargs)
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


async def test_token_without_exp_is_401(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    from tests.support.constants import JWT_SECRET

    token = jwt.encode({"sub": "u1", "org_id": str(tenant.org)}, JWT_SECRET, algorithm="HS256")
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


async def test_alg_none_is_401(client: httpx.AsyncClient, tenant: Tenant) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(tenant.org)).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


async def test_hs512_is_refused_when_only_hs256_is_allowed(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    token = world.jwt(tenant.org, algorithm="HS512")
    response = await client.get(tenant.path(uuid.uuid4()), headers=bearer(token))
    assert_unauthorized(response, mentions="algorithm")


async def test_valid_hs256_token_of_another_org_gets_404(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(uuid.uuid4())))
    assert response.status_code == 404


async def test_custom_org_claim_name(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    async with serve(make_settings(jwt_org_claim="https://orbit/org")) as client:
        good = world.jwt(None, **{"https://orbit/org": str(tenant.org)})
        assert (
            await client.get(tenant.path(export["id"]), headers=bearer(good))
        ).status_code == 409
        plain = world.jwt(tenant.org)
        assert_unauthorized(await client.get(tenant.path(export["id"]), headers=bearer(plain)))


# --- JWKS (RS256/ES256) with issuer and audience -----------------------------------------


async def test_rs256_and_es256_tokens_from_jwks_work(
    jwks_client: httpx.AsyncClient, jwks: Jwks, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    for key, alg, kid in ((jwks.rsa, "RS256", "rsa-1"), (jwks.ec, "ES256", "ec-1")):
        token = jwt.encode(_claims(tenant.org), key, algorithm=alg, headers={"kid": kid})
        response = await jwks_client.get(tenant.path(export["id"]), headers=bearer(token))
        assert response.status_code == 200, alg


async def test_jwks_is_fetched_at_start_not_per_request(
    jwks_client: httpx.AsyncClient, jwks: Jwks, tenant: Tenant
) -> None:
    before = jwks.fetches
    token = jwt.encode(_claims(tenant.org), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    for _ in range(5):
        response = await jwks_client.get(tenant.path(uuid.uuid4()), headers=bearer(token))
        assert response.status_code == 404
    assert jwks.fetches == before
    assert before >= 1


@pytest.mark.parametrize(
    ("case", "claims"),
    [
        ("wrong issuer", {"iss": "https://evil.test/"}),
        ("no issuer", {"iss": None}),
        ("wrong audience", {"aud": "someone-else"}),
        ("no audience", {"aud": None}),
        ("expired", {"exp": 1_000_000_000}),
        ("not yet valid", {"nbf": 4_000_000_000}),
    ],
)
async def test_bad_rs256_claims_are_401(
    jwks_client: httpx.AsyncClient, jwks: Jwks, tenant: Tenant, case: str, claims: dict[str, Any]
) -> None:
    token = jwt.encode(
        _claims(tenant.org, **claims), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"}
    )
    assert_unauthorized(await jwks_client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


@pytest.mark.parametrize(
    "kid", ["other", "../../../../dev/null", "' OR '1'='1", "rsa-1\x00", "", "x" * 5000]
)
async def test_unknown_or_injected_kid_is_401(
    jwks_client: httpx.AsyncClient, jwks: Jwks, tenant: Tenant, kid: str
) -> None:
    token = jwt.encode(_claims(tenant.org), jwks.rsa, algorithm="RS256", headers={"kid": kid})
    assert_unauthorized(await jwks_client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


async def test_token_signed_by_a_foreign_key_with_known_kid_is_401(
    jwks_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(tenant.org), foreign, algorithm="RS256", headers={"kid": "rsa-1"})
    assert_unauthorized(await jwks_client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


async def test_kid_of_an_ec_key_with_rs256_header_is_401(
    jwks_client: httpx.AsyncClient, jwks: Jwks, tenant: Tenant
) -> None:
    token = jwt.encode(_claims(tenant.org), jwks.rsa, algorithm="RS256", headers={"kid": "ec-1"})
    assert_unauthorized(await jwks_client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


async def test_hs256_signed_with_the_rsa_public_key_is_401(
    jwks_client: httpx.AsyncClient, jwks: Jwks, tenant: Tenant
) -> None:
    """Algorithm confusion: the public key used as an HMAC secret must not verify."""
    import hashlib
    import hmac

    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = _b64(json.dumps(_claims(tenant.org)).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(jwks.rsa_public_pem(), signing_input, hashlib.sha256).digest()
    token = f"{header}.{payload}.{_b64(signature)}"
    assert_unauthorized(await jwks_client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


async def test_jku_header_is_ignored(jwks_client: httpx.AsyncClient, tenant: Tenant) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        _claims(tenant.org),
        attacker,
        algorithm="RS256",
        headers={"kid": "attacker", "jku": "http://127.0.0.1:1/evil.json"},
    )
    assert_unauthorized(await jwks_client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


async def test_rs256_refused_when_not_in_allowed_algorithms(
    client: httpx.AsyncClient, jwks: Jwks, tenant: Tenant
) -> None:
    token = jwt.encode(_claims(tenant.org), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))


# --- verified-token cache ------------------------------------------------------------------


def test_a_verified_token_is_remembered_unless_the_cache_is_off(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    from app.auth.jwt_verifier import JwtVerifier

    token = world.jwt(tenant.org)
    cached = JwtVerifier(make_settings(), None)
    assert cached.verify(token) is cached.verify(token)
    uncached = JwtVerifier(make_settings(jwt_cache_seconds=0), None)
    first, second = uncached.verify(token), uncached.verify(token)
    assert first == second
    assert first is not second


def test_a_verified_token_is_checked_again_after_the_cache_lifetime(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    from app.auth.jwt_verifier import JwtVerifier

    token = world.jwt(tenant.org)
    now = [1000.0]
    verifier = JwtVerifier(make_settings(jwt_cache_seconds=30), None, monotonic=lambda: now[0])
    first = verifier.verify(token)
    now[0] += 29.9
    assert verifier.verify(token) is first
    now[0] += 0.1
    # Verified again (a new principal): the bound on trusting a token whose key was dropped.
    assert verifier.verify(token) is not first


def test_a_remembered_token_is_verified_again_at_its_exp_and_refused_then(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    """A verified token is remembered for JWT_CACHE_SECONDS (an hour here) but never past its
    own `exp`: at that instant, by the verifier's injected clocks, it is verified again rather
    than taken from memory, and the verification refuses a token past its `exp` as expired.
    (PyJWT reads the real clock, so the refusal is shown on a token already past its `exp`.)"""
    import time

    from app.auth.jwt_verifier import JwtVerifier
    from app.core.errors import Unauthorized

    wall = float(int(time.time()))
    token = world.jwt(tenant.org, exp=int(wall) + 300)
    now = [1000.0]
    verifier = JwtVerifier(
        make_settings(jwt_leeway_seconds=0, jwt_cache_seconds=3600),
        None,
        monotonic=lambda: now[0],
        wall_clock=lambda: wall,
    )
    first = verifier.verify(token)
    now[0] += 299.5
    assert verifier.verify(token) is first
    now[0] += 0.5
    assert verifier.verify(token) is not first
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(world.jwt(tenant.org, exp=int(time.time()) - 1))


async def test_a_bad_token_is_never_remembered(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    token = world.jwt(tenant.org, secret="another-secret-0123456789abcdef0123456789")
    for _ in range(3):
        assert_unauthorized(await client.get(tenant.path(uuid.uuid4()), headers=bearer(token)))
