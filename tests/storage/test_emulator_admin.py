"""The B2 emulator's admin endpoints need its key, and what it remembers is bounded: it may run
for days (make run, compose) where others can reach its port."""

from __future__ import annotations

import httpx
import pytest
from orbit_dev.b2_emulator import create_emulator, state
from orbit_dev.b2_emulator.state import DownloadGrant, EmulatorState

KEY = "emulator-key-0123456789"


@pytest.fixture
async def admin() -> httpx.AsyncClient:
    app = create_emulator("key-id", KEY, ["bucket"])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_emulator/requests"),
        ("DELETE", "/_emulator/requests"),
        ("POST", "/_emulator/faults"),
        ("DELETE", "/_emulator/faults"),
        ("POST", "/_emulator/expire-account-tokens"),
        ("POST", "/_emulator/clock"),
    ],
)
async def test_admin_endpoints_need_the_emulators_key(
    admin: httpx.AsyncClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = await admin.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (headers, response.status_code)
    response = await admin.request(
        method, path, headers={"Authorization": f"Bearer {KEY}"}, json={}
    )
    assert response.status_code in (200, 204)


async def test_health_needs_nothing(admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/_emulator/health")).status_code == 204


def test_the_request_log_and_the_grants_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    world = EmulatorState(key_id="id", key=KEY)
    assert world.request_log.maxlen == state.MAX_LOGGED_REQUESTS
    monkeypatch.setattr(state, "MAX_DOWNLOAD_GRANTS", 5)
    now = world.now()
    for n in range(4):
        world.grant(f"live-{n}", DownloadGrant("b", "p", now + 60, None))
    world.grant("expired", DownloadGrant("b", "p", now - 1, None))
    world.grant("newest", DownloadGrant("b", "p", now + 60, None))
    assert "expired" not in world.download_grants
    assert len(world.download_grants) == 5
    for n in range(4, 10):
        world.grant(f"live-{n}", DownloadGrant("b", "p", now + 60, None))
    assert len(world.download_grants) == 5
    assert "live-9" in world.download_grants and "live-0" not in world.download_grants
