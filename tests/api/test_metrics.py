"""GET /metrics: Prometheus text with request, B2, token-cache, pool and breaker metrics, correct
across worker processes, optionally behind METRICS_TOKEN, absent when METRICS_ENABLED is off."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import MakeSettings, bearer, serve
from tests.support.emulator import Emulator
from tests.support.processes import server_process
from tests.support.waiting import wait_until
from tests.support.world import Tenant, World

ROUTE = "/v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}"
SIGN = "b2_get_download_authorization"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, **headers: str) -> str:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_requests_b2_calls_and_token_cache_are_counted(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    async with serve(make_settings(db_pool_size=7)) as client:
        before = await scrape(client)
        for _ in range(3):
            assert (await client.get(tenant.path(export["id"]), headers=headers)).status_code == 200
        assert (await client.get(tenant.path(uuid.uuid4()), headers=headers)).status_code == 404
        assert (await client.get("/no/such/route")).status_code == 404
        after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": ROUTE, "method": "GET", "status": "200"}
    assert delta("orbit_http_requests_total", **ok) == 3
    assert delta("orbit_http_requests_total", **(ok | {"status": "404"})) == 1
    assert delta("orbit_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta("orbit_http_request_duration_seconds_count", route=ROUTE, status="200") == 3
    assert (
        delta("orbit_http_request_duration_seconds_bucket", route=ROUTE, status="200", le="+Inf")
        == 3
    )
    assert delta("orbit_http_request_duration_seconds_sum", route=ROUTE, status="200") > 0
    # One B2 call for the file, then the cached token twice.
    assert delta("orbit_b2_calls_total", operation=SIGN, outcome="2xx") == 1
    assert delta("orbit_b2_call_duration_seconds_count", operation=SIGN) == 1
    assert delta("orbit_download_token_cache_total", result="miss") == 1
    assert delta("orbit_download_token_cache_total", result="hit") == 2
    assert value(after, "orbit_db_pool_size") == 7
    assert value(after, "orbit_db_pool_checked_out") == 0
    assert value(after, "orbit_storage_circuit_breaker_state", state="closed") == 1
    assert value(after, "orbit_storage_circuit_breaker_state", state="open") == 0


async def test_failed_b2_calls_and_an_open_breaker_show(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    headers = bearer(world.jwt(tenant.org))
    settings = make_settings(storage_breaker_threshold=2, storage_breaker_cooldown_seconds=60)
    async with serve(settings) as client:
        before = await scrape(client)
        emulator.inject(status=503, apis=[SIGN])
        try:
            for _ in range(3):
                export = await world.export(tenant)
                response = await client.get(tenant.path(export["id"]), headers=headers)
                assert response.status_code == 503
        finally:
            emulator.clear_faults()
        after = await scrape(client)
    failed = value(after, "orbit_b2_calls_total", operation=SIGN, outcome="5xx") - value(
        before, "orbit_b2_calls_total", operation=SIGN, outcome="5xx"
    )
    # Two requests reached B2 (each tried twice); the third met the open breaker.
    assert failed == 4
    assert value(after, "orbit_storage_circuit_breaker_state", state="open") == 1
    assert value(after, "orbit_storage_circuit_breaker_state", state="closed") == 0


async def test_metrics_token_is_required_when_set(make_settings: MakeSettings) -> None:
    token = "scrape-" + "s" * 24
    async with serve(make_settings(metrics_token=token)) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-000000000"},
            {"Authorization": token},
        ):
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
            assert token not in response.text
        assert "orbit_http_requests_total" in await scrape(client, Authorization=f"Bearer {token}")


async def test_metrics_can_be_turned_off(make_settings: MakeSettings) -> None:
    async with serve(make_settings(metrics_enabled=False)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_metrics_are_not_in_the_openapi_document(client_openapi: dict[str, object]) -> None:
    paths = client_openapi["paths"]
    assert isinstance(paths, dict)
    assert "/metrics" not in paths


@pytest.fixture
def client_openapi(make_settings: MakeSettings) -> dict[str, object]:
    from app.main import create_app

    return create_app(make_settings()).openapi()


# --- real processes: `orbit-exports serve` with one and with two workers ---------------------


@pytest.fixture
def two_workers(cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    extra = {"WEB_CONCURRENCY": "2", "DB_POOL_SIZE": "3", "RATE_LIMIT_PER_MINUTE": "0"}
    with server_process(cli_env, tmp_path_factory.mktemp("metrics"), extra) as url:
        yield url


def scrape_anew(url: str) -> str:
    # A new connection per request, so the kernel spreads them over the workers.
    return httpx.get(url + "/metrics", headers={"Connection": "close"}).text


def livez_count(text: str) -> float:
    return value(text, "orbit_http_requests_total", route="/livez", method="GET", status="200")


def test_several_workers_report_one_sum(two_workers: str) -> None:
    import time

    # Both workers are up once each has written its pool gauge (livesum adds live workers).
    deadline = time.monotonic() + 20
    while value(scrape_anew(two_workers), "orbit_db_pool_size") != 6:
        assert time.monotonic() < deadline, "the two workers' gauges were never summed"
        time.sleep(0.2)
    start = livez_count(scrape_anew(two_workers))
    for _ in range(40):
        response = httpx.get(two_workers + "/livez", headers={"Connection": "close"})
        assert response.status_code == 200
    # Whichever worker answers the scrape, it reports all 40, not just its own share.
    for _ in range(6):
        text = scrape_anew(two_workers)
        assert livez_count(text) - start == 40
        assert value(text, "orbit_db_pool_size") == 6


def test_single_worker_server_serves_its_own_counts_and_process_metrics(live_server: str) -> None:
    before = livez_count(scrape_anew(live_server))
    for _ in range(3):
        assert httpx.get(live_server + "/livez").status_code == 200
    text = scrape_anew(live_server)
    assert livez_count(text) - before == 3
    # One process: prometheus-client's default registry, with its process and Python metrics.
    assert "process_resident_memory_bytes" in text
    assert "python_info" in text


async def test_a_b2_call_past_the_deadline_is_cut_off_in_its_thread_too(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    """The request gets its 503 at the deadline; the HTTP call in the B2 thread must end then
    too (b2sdk alone would wait up to 128 s for an answer), which the metrics show: an `error`
    outcome long before the emulator's 3 s delay is over. The retry after it is not sent at
    all: the caller is gone. With a single B2 thread, the next request's call is the next
    thing that thread does, so once B2 has seen that one, the retry would have come first."""
    import asyncio

    export, after = await world.export(tenant), await world.export(tenant)
    loop = asyncio.get_running_loop()
    headers = bearer(world.jwt(tenant.org))

    def cut(text: str) -> float:
        return value(text, "orbit_b2_calls_total", operation=SIGN, outcome="error") - value(
            before, "orbit_b2_calls_total", operation=SIGN, outcome="error"
        )

    settings = make_settings(storage_timeout_seconds=1.0, storage_max_threads=1)
    async with serve(settings) as client:
        before = await scrape(client)
        emulator.inject(delaySeconds=3.0, apis=[SIGN])
        try:
            emulator.clear()
            started = loop.time()
            response = await client.get(tenant.path(export["id"]), headers=headers)
            assert response.status_code == 503

            async def was_cut() -> bool:
                return cut(await scrape(client)) >= 1

            # The emulator answers after 3 s; the cut shows well before.
            await wait_until(
                was_cut,
                within=started + 2.5 - loop.time(),
                what="the B2 call was cut at the deadline",
            )
        finally:
            emulator.clear_faults()
        answered = await client.get(tenant.path(after["id"]), headers=headers)
        assert answered.status_code == 200
        assert emulator.calls(SIGN) == 2  # the cut call and the next request's, no retry
        assert cut(await scrape(client)) == 1
