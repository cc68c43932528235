"""Liveness and readiness probes."""

from __future__ import annotations

import httpx

from tests.support.app import MakeSettings, serve
from tests.support.processes import free_port


async def test_livez_needs_no_credentials(client: httpx.AsyncClient) -> None:
    response = await client.get("/livez")
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "ok"


async def test_readyz_is_ready_with_database_and_storage(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["data"]["checks"] == {"database": "ok", "storage": "ok"}


async def test_readyz_is_503_without_storage(make_settings: MakeSettings) -> None:
    settings = make_settings(b2_application_key_id=None, b2_application_key=None)
    async with serve(settings) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "NOT_READY"
    assert response.json()["error"]["details"] == {"database": "ok", "storage": "not_configured"}


async def test_readyz_is_503_without_database_and_leaks_nothing(
    make_settings: MakeSettings,
) -> None:
    url = f"postgresql+asyncpg://postgres:db-password-123@127.0.0.1:{free_port()}/nowhere"
    async with serve(make_settings(database_url=url)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["details"]["database"] == "unavailable"
    assert "db-password-123" not in response.text
    assert "127.0.0.1" not in response.text


async def test_probes_ignore_credentials_even_bad_ones(client: httpx.AsyncClient) -> None:
    """Credentials are resolved before routing for every request; routes that need no caller
    (the probes) answer the same whatever is sent."""
    for headers in ({"X-API-Key": "sk_not-a-real-key"}, {"Authorization": "Bearer nope"}):
        assert (await client.get("/livez", headers=headers)).status_code == 200
        assert (await client.get("/readyz", headers=headers)).status_code == 200
