"""SIGTERM on a real `orbit-exports serve`: in-flight requests finish, new connections are
refused, the process exits within its grace period; /readyz reports draining."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx

from app.api.health import Readiness
from tests.support.app import MakeSettings, bearer, serve
from tests.support.constants import B2_KEY, B2_KEY_ID, CLI, JWT_SECRET
from tests.support.emulator import Emulator
from tests.support.processes import free_port, wait_for_http
from tests.support.waiting import wait_until_sync
from tests.support.world import Tenant, World

SIGN = "b2_get_download_authorization"


async def test_sigterm_lets_the_in_flight_request_finish(
    database_url: str, clean_emulator: Emulator, world: World
) -> None:
    tenant = world.tenant()
    export = await world.export(tenant)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("B2_", "JWT_", "DATABASE_"))}
    env |= {
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        "B2_APPLICATION_KEY_ID": B2_KEY_ID,
        "B2_APPLICATION_KEY": B2_KEY,
        "B2_REALM": clean_emulator.url,
        "STORAGE_TIMEOUT_SECONDS": "5",
        "SHUTDOWN_GRACE_SECONDS": "10",
        # The slow request must reach (slow) B2, not the token cache.
        "EXPORT_URL_CACHE_SIZE": "0",
    }
    headers = bearer(world.jwt(tenant.org))
    await asyncio.to_thread(
        _sigterm_scenario, env, tenant.path(export["id"]), headers, clean_emulator
    )


def _sigterm_scenario(
    env: dict[str, str], path: str, headers: dict[str, str], emulator: Emulator
) -> None:
    port = free_port()
    proc = subprocess.Popen([CLI, "serve", "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/livez")
        url = base + path
        assert httpx.get(url, headers=headers).status_code == 200  # warm: B2 authorized
        emulator.clear()
        emulator.inject(delaySeconds=1.5, apis=[SIGN])
        result: dict[str, httpx.Response] = {}
        slow = threading.Thread(
            target=lambda: result.update(r=httpx.get(url, headers=headers, timeout=10))
        )
        slow.start()
        wait_until_sync(
            lambda: emulator.calls(SIGN) == 1,
            within=5,
            what="the slow request is in flight (at B2)",
        )
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_until_sync(
            lambda: refuses_connections(base),
            within=5,
            what="the server refuses new connections",
        )
        assert slow.is_alive(), "new connections were accepted until the request had finished"
        slow.join(10)
        assert result["r"].status_code == 200
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete.
        assert proc.wait(10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()


def refuses_connections(base: str) -> bool:
    try:
        httpx.get(base + "/livez", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        # Queued while the listening socket was being closed, then dropped: not yet refused.
        return False
    return False


async def test_readyz_is_503_once_shutdown_has_begun(
    make_settings: MakeSettings, world: World
) -> None:
    async with serve(make_settings()) as client:
        assert (await client.get("/readyz")).status_code == 200
        app = client._transport.app  # type: ignore[attr-defined]
        readiness_of(app).draining = True
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["details"] == {"shutdown": "in_progress"}
        tenant = world.tenant()
        # Requests still in the pipe are served while draining.
        token = world.jwt(tenant.org)
        assert (
            await client.get(tenant.path(uuid.uuid4()), headers=bearer(token))
        ).status_code == 404


def readiness_of(app: object) -> Readiness:
    readiness = app.state.readiness  # type: ignore[attr-defined]
    assert isinstance(readiness, Readiness)
    return readiness


async def test_with_a_shutdown_delay_the_replica_drains_before_its_port_closes(
    cli_env: dict[str, str], world: World, tenant: Tenant, tmp_path: Path
) -> None:
    """SHUTDOWN_DELAY_SECONDS: /readyz says 503 at once, requests are still served meanwhile,
    then the port closes and the process exits."""
    export = await world.export(tenant, status="processing")
    headers = {"Authorization": f"Bearer {world.jwt(tenant.org)}"}
    path = tenant.path(export["id"])
    await asyncio.to_thread(delayed_drain, cli_env, path, headers)


def delayed_drain(env: dict[str, str], path: str, headers: dict[str, str]) -> None:
    port = free_port()
    extra = {"SHUTDOWN_DELAY_SECONDS": "2"}
    proc = subprocess.Popen(
        [CLI, "serve", "--port", str(port)], env=env | extra, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/livez")
        assert httpx.get(base + "/readyz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until_sync(
            lambda: httpx.get(base + "/readyz").status_code == 503,
            within=1,
            what="/readyz says draining",
        )
        # Still serving: the balancer has time to take the replica out.
        assert httpx.get(base + path, headers=headers).status_code == 409
        assert time.monotonic() - signalled < 2
        wait_until_sync(lambda: refuses_connections(base), within=5, what="the port closes")
        assert time.monotonic() - signalled >= 2
        assert proc.wait(10) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
