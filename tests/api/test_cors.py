"""CORS for the dashboard: allowed origins may call with a Bearer JWT and read X-Request-ID;
other origins get no CORS headers, and a rejected preflight is the contract's envelope."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError

from app.core.settings import Settings
from tests.support.app import MakeSettings, bearer, serve
from tests.support.world import Tenant, World

DASHBOARD = "https://dashboard.orbit.test"


@pytest.fixture
async def cors_client(make_settings: MakeSettings) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(cors_allow_origins=f"{DASHBOARD}, http://localhost:5173")
    async with serve(settings) as client:
        yield client


def preflight(origin: str, headers: str = "authorization,x-request-id") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": headers,
    }


async def test_preflight_from_the_dashboard_is_allowed(
    cors_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await cors_client.options(tenant.path(tenant.run), headers=preflight(DASHBOARD))
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == DASHBOARD
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    for header in ("authorization", "x-api-key", "x-request-id"):
        assert header in allowed
    assert response.headers["Access-Control-Allow-Methods"] == "GET"
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_dashboard_get_exposes_the_request_id(
    cors_client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    response = await cors_client.get(
        tenant.path(export["id"]), headers={**bearer(world.jwt(tenant.org)), "Origin": DASHBOARD}
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "x-request-id" in response.headers["Access-Control-Expose-Headers"].lower()


async def test_other_origin_gets_no_cors_headers(
    cors_client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    evil = "https://evil.example"
    response = await cors_client.get(
        tenant.path(tenant.run), headers={**bearer(world.jwt(tenant.org)), "Origin": evil}
    )
    assert "Access-Control-Allow-Origin" not in response.headers
    rejected = await cors_client.options(tenant.path(tenant.run), headers=preflight(evil))
    assert rejected.status_code == 403
    assert rejected.json()["error"]["code"] == "CORS_REJECTED"
    assert rejected.json()["error"]["details"] == {"rejected": ["origin"]}
    assert "Access-Control-Allow-Origin" not in rejected.headers


async def test_preflight_asking_for_another_header_is_rejected(
    cors_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await cors_client.options(
        tenant.path(tenant.run), headers=preflight(DASHBOARD, "authorization,x-evil")
    )
    assert response.status_code == 403
    assert response.json()["error"]["details"] == {"rejected": ["headers"]}


async def test_without_configured_origins_there_is_no_cors(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await client.options(tenant.path(tenant.run), headers=preflight(DASHBOARD))
    assert response.status_code == 405
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("bad", ["*", "https://app.example.com/", "app.example.com", "null"])
def test_only_exact_origins_are_accepted(bad: str) -> None:
    with pytest.raises(ValidationError, match="exact origins"):
        Settings(_env_file=None, cors_allow_origins=bad)  # type: ignore[call-arg]
