"""A token whose `alg` does not fit its key's type (an ES256 token naming an RSA key published
without `alg`, say) is a 401, never a 500: PyJWT raises TypeError or ValueError on such a pair.
Every allowed algorithm against every kind of published key, with and without `alg` on the
JWK, signed properly where the pair fits and with a forged signature where it does not."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.support.app import MakeSettings, bearer, serve
from tests.support.jwks import Jwks, serve_jwks
from tests.support.secrets import SECRETS

ALGORITHMS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
PRIVATE_KEYS: dict[str, Any] = {
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
# What each algorithm can sign with, among the keys above.
SIGNS_WITH = {"RS256": "rsa", "PS256": "rsa", "ES256": "p256", "ES384": "p384", "EdDSA": "ed25519"}
TO_JWK = {"rsa": RSAAlgorithm, "p256": ECAlgorithm, "p384": ECAlgorithm, "ed25519": OKPAlgorithm}
DECLARED = {"rsa": "RS256", "p256": "ES256", "p384": "ES384", "ed25519": "EdDSA"}


def published(name: str, with_alg: bool) -> dict[str, Any]:
    jwk = json.loads(TO_JWK[name].to_jwk(PRIVATE_KEYS[name].public_key()))
    jwk |= {"kid": f"{name}-{'alg' if with_alg else 'bare'}", "use": "sig"}
    if with_alg:
        jwk["alg"] = DECLARED[name]
    return jwk


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(alg: str, kid: str, key_name: str, claims: dict[str, Any]) -> str:
    """Signed by `key_name` when `alg` can sign with it; else a forged token with its header."""
    if SIGNS_WITH[alg] == key_name:
        return jwt.encode(claims, PRIVATE_KEYS[key_name], algorithm=alg, headers={"kid": kid})
    header = {"alg": alg, "kid": kid, "typ": "JWT"}
    parts = [json.dumps(header).encode(), json.dumps(claims).encode(), b"\x01" * 64]
    return ".".join(_b64(part) for part in parts)


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    with serve_jwks() as keys:
        keys.document = {
            "keys": [published(name, alg) for name in PRIVATE_KEYS for alg in (True, False)]
        }
        yield keys


@pytest.fixture(scope="module")
async def client(make_settings: MakeSettings, jwks: Jwks) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        jwt_secret=None,
        jwt_algorithms=ALGORITHMS,
        jwt_jwks_url=jwks.url,
        rate_limit_per_minute=0,
    )
    async with serve(settings) as c:
        yield c


KIDS = [f"{name}-{kind}" for name in PRIVATE_KEYS for kind in ("alg", "bare")]


@hypothesis_settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(alg=st.sampled_from(ALGORITHMS), kid=st.sampled_from(KIDS))
async def test_no_pairing_of_algorithm_and_key_answers_a_5xx(
    client: httpx.AsyncClient, alg: str, kid: str
) -> None:
    key_name = kid.rsplit("-", 1)[0]
    claims = {"sub": "u", "org_id": str(uuid.uuid4()), "exp": int(time.time()) + 600}
    credential = token(alg, kid, key_name, claims)
    SECRETS.add(credential)
    path = f"/v1/intent/audiences/{uuid.uuid4()}/runs/{uuid.uuid4()}/exports/{uuid.uuid4()}"
    response = await client.get(path, headers=bearer(credential))
    fits = SIGNS_WITH[alg] == key_name and (kid.endswith("bare") or DECLARED[key_name] == alg)
    # A fitting, properly signed token reaches the lookup (404: no such export); any other
    # pairing is refused as a bad credential.
    assert response.status_code == (404 if fits else 401), (alg, kid, response.text)


async def test_the_reported_pairing_is_a_401(client: httpx.AsyncClient) -> None:
    """An ES256 token naming an RSA key published without `alg` (PyJWT: TypeError)."""
    claims = {"sub": "u", "org_id": str(uuid.uuid4()), "exp": int(time.time()) + 600}
    credential = token("ES256", "rsa-bare", "rsa", claims)
    path = f"/v1/intent/audiences/{uuid.uuid4()}/runs/{uuid.uuid4()}/exports/{uuid.uuid4()}"
    response = await client.get(path, headers=bearer(credential))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"
