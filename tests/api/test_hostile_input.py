"""Property tests of header and path handling on a real server: whatever arrives, the answer is
401 or 422 (404 for a well-formed but unknown export) in the contract's envelope, never a 500."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.contract import assert_matches_contract
from tests.support.world import World

# Header values HTTP can carry: visible Latin-1 plus space and tab (no CR, LF or NUL).
# h11 (the client) refuses leading or trailing white space, so values are stripped.
header_bytes = st.binary(max_size=300).map(
    lambda b: bytes(c for c in b if c in (9, 32) or 33 <= c <= 126 or 128 <= c <= 255).strip()
)
long_header = st.integers(min_value=8_000, max_value=40_000).map(lambda n: b"A" * n)
# MAX_HEADER_BYTES of the live server (the default): all of a request's header bytes count.
MAX_HEADER_BYTES = 16_384


def refused_for(value: bytes) -> set[int]:
    """401 for a bad credential; 431 once the request's headers pass MAX_HEADER_BYTES."""
    return {401, 431} if len(value) > MAX_HEADER_BYTES - 512 else {401}


any_header = st.one_of(header_bytes, long_header)
PROFILE = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


@pytest.fixture(scope="module")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=10) as client:
        yield client


def check(response: httpx.Response, allowed: set[int]) -> None:
    assert response.status_code in allowed, response.text
    assert_matches_contract(response)


@PROFILE
@given(value=any_header)
def test_any_authorization_header_is_401(http: httpx.Client, value: bytes) -> None:
    path = f"/v1/intent/audiences/{uuid.uuid4()}/runs/{uuid.uuid4()}/exports/{uuid.uuid4()}"
    response = http.get(path, headers=[(b"Authorization", value)])
    check(response, refused_for(value))
    if len(value) > MAX_HEADER_BYTES:
        assert response.status_code == 431


@PROFILE
@given(token=header_bytes)
def test_any_bearer_token_is_401(http: httpx.Client, token: bytes) -> None:
    path = f"/v1/intent/audiences/{uuid.uuid4()}/runs/{uuid.uuid4()}/exports/{uuid.uuid4()}"
    value = (b"Bearer " + token).strip()
    check(http.get(path, headers=[(b"Authorization", value)]), {401})


@PROFILE
@given(value=any_header)
def test_any_api_key_header_is_401(http: httpx.Client, value: bytes) -> None:
    path = f"/v1/intent/audiences/{uuid.uuid4()}/runs/{uuid.uuid4()}/exports/{uuid.uuid4()}"
    check(http.get(path, headers=[(b"X-API-Key", b"sk_" + value)]), refused_for(value))
    check(http.get(path, headers=[(b"X-API-Key", value)]), refused_for(value))


@PROFILE
@given(auth=header_bytes, key=header_bytes, schemes=st.integers(1, 4))
def test_several_schemes_and_both_headers_are_401(
    http: httpx.Client, auth: bytes, key: bytes, schemes: int
) -> None:
    path = f"/v1/intent/audiences/{uuid.uuid4()}/runs/{uuid.uuid4()}/exports/{uuid.uuid4()}"
    bearer = (b"Bearer " + auth).strip()
    headers = [(b"Authorization", bearer)] * schemes + [(b"X-API-Key", b"sk_" + key)]
    check(http.get(path, headers=headers), {401})


def _mutations(value: str) -> st.SearchStrategy[str]:
    # Not "/": Starlette routes on the decoded path, so an encoded slash makes another route
    # (404 NOT_FOUND before any authentication, like every unknown route).
    alphabet = st.characters(codec="utf-8", exclude_characters="/")
    return st.one_of(
        st.integers(0, len(value) - 1).map(lambda i: value[:i] + value[i + 1 :]),
        st.tuples(st.integers(0, len(value)), alphabet).map(
            lambda t: value[: t[0]] + t[1] + value[t[0] :]
        ),
        st.tuples(st.integers(0, len(value) - 1), alphabet).map(
            lambda t: value[: t[0]] + t[1] + value[t[0] + 1 :]
        ),
        st.just(value.upper()),
        st.just(value.replace("-", "")),
        st.just("{" + value + "}"),
    )


@pytest.fixture(scope="module")
async def api_key(world: World) -> str:
    return await world.api_key(world.tenant().org)


@PROFILE
@given(data=st.data(), which=st.sampled_from(["id", "runId", "exportId"]))
def test_almost_uuid_path_parameters(
    http: httpx.Client, api_key: str, data: st.DataObject, which: str
) -> None:
    params = {name: str(uuid.uuid4()) for name in ("id", "runId", "exportId")}
    params[which] = data.draw(_mutations(params[which]))
    path = "/v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}".format(
        **{k: quote(v, safe="") for k, v in params.items()}
    )
    authenticated = http.get(path, headers={"X-API-Key": api_key})
    check(authenticated, {404, 422})
    if authenticated.status_code == 422:
        assert authenticated.json()["error"]["details"][0]["parameter"] == which
    check(http.get(path), {401})


@PROFILE
@given(value=any_header)
def test_request_id_injection_is_neutralised(http: httpx.Client, value: bytes) -> None:
    response = http.get("/livez", headers=[(b"X-Request-ID", value)])
    assert response.status_code in ({200, 431} if 431 in refused_for(value) else {200})
    echoed = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}", echoed)
    if echoed != value.decode("latin-1").strip():
        assert uuid.UUID(echoed)
