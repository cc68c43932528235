"""Every status the service can send uses the contract's error envelope."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.support.app import MakeSettings, bearer, serve
from tests.support.processes import free_port
from tests.support.world import Tenant, World


async def test_invalid_uuid_after_authentication_is_422_naming_the_parameter(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    path = f"/v1/intent/audiences/{tenant.audience}/runs/not-a-uuid/exports/{uuid.uuid4()}"
    response = await client.get(path, headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "runId" in error["message"]
    assert [d["parameter"] for d in error["details"]] == ["runId"]
    assert error["details"][0]["location"] == "path"


@pytest.mark.parametrize(
    "bad",
    ["123", "0000000-0000-0000-0000-000000000000", "g0000000-0000-0000-0000-000000000000", "%20"],
)
async def test_almost_uuids_are_422(
    client: httpx.AsyncClient, world: World, tenant: Tenant, bad: str
) -> None:
    path = f"/v1/intent/audiences/{bad}/runs/{tenant.run}/exports/{uuid.uuid4()}"
    response = await client.get(path, headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["parameter"] == "id"


async def test_unknown_route_is_404_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


async def test_wrong_method_is_405_envelope_with_allow(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await client.delete(tenant.path(uuid.uuid4()))
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert response.headers["Allow"] == "GET"


async def test_request_id_is_echoed_when_sane(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get(tenant.path(uuid.uuid4()), headers={"X-Request-ID": "req-42.a:b"})
    assert response.headers["X-Request-ID"] == "req-42.a:b"
    assert response.json()["meta"]["request_id"] == "req-42.a:b"


@pytest.mark.parametrize(
    "hostile", ["has space", "a" * 500, "new\\nline", "<script>", "", "ünïcode", "-leading-dash"]
)
async def test_insane_request_id_is_replaced(
    client: httpx.AsyncClient, tenant: Tenant, hostile: str
) -> None:
    response = await client.get(
        tenant.path(uuid.uuid4()), headers=[(b"X-Request-ID", hostile.encode())]
    )
    rid = response.headers["X-Request-ID"]
    assert rid != hostile
    assert uuid.UUID(rid)


async def test_unexpected_error_is_500_envelope_without_internals(
    make_settings: MakeSettings, empty_database_url: str, world: World, tenant: Tenant
) -> None:
    """An unmigrated database makes the query fail with a real programming error. The 500
    carries the request id and, for the dashboard's origin, the CORS headers: a browser can
    read it."""
    origin = "https://dashboard.orbit.test"
    settings = make_settings(database_url=empty_database_url, cors_allow_origins=origin)
    async with serve(settings) as client:
        response = await client.get(
            tenant.path(uuid.uuid4()), headers=bearer(world.jwt(tenant.org)) | {"Origin": origin}
        )
    assert response.status_code == 500
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert uuid.UUID(response.headers["X-Request-ID"])
    body = response.json()
    assert body["error"]["code"] == "INTERNAL_ERROR"
    assert body["meta"]["request_id"] == response.headers["X-Request-ID"]
    for leak in ("intent_audience_exports", "Traceback", "asyncpg", "sqlalchemy", "relation"):
        assert leak not in response.text


async def test_database_unreachable_is_503_database_unavailable(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    async with serve(make_settings(database_url=url)) as client:
        started = time.monotonic()
        response = await client.get(
            tenant.path(uuid.uuid4()), headers=bearer(world.jwt(tenant.org))
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
    assert response.headers["Retry-After"].isdigit()
    assert elapsed < 3


async def test_unauthenticated_request_does_not_touch_an_unreachable_database(
    make_settings: MakeSettings, tenant: Tenant
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    async with serve(make_settings(database_url=url)) as client:
        response = await client.get(tenant.path(uuid.uuid4()))
    assert response.status_code == 401
