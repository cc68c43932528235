"""Tracing on a real `orbit-exports serve`, exporting to an OTLP/HTTP receiver started here:
one server span per request with the route, status, request id and organization; the
statements, Redis commands and the B2 call as its children; no probe traced, no trace that a
request did not start, and no secret, token or handed-out URL in any attribute."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from orbit_dev.otlp import OtlpReceiver, ReceivedSpan

from tests.support.constants import B2_KEY, JWT_SECRET
from tests.support.processes import server_process
from tests.support.world import Tenant, World

ROUTE = "/v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}"
PROBES = ("/livez", "/readyz", "/metrics")


async def test_a_request_is_one_trace_with_its_statements_redis_and_b2_calls(
    cli_env: dict[str, str], redis_url: str, world: World, tenant: Tenant, tmp_path: Path
) -> None:
    export = await world.export(tenant)
    key = await world.api_key(tenant.org)
    token = world.jwt(tenant.org)
    await asyncio.to_thread(
        traced_requests, cli_env, redis_url, tmp_path, tenant, export, key, token
    )


def traced_requests(
    cli_env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    tenant: Tenant,
    export: dict[str, object],
    key: str,
    token: str,
) -> None:
    path = tenant.path(str(export["id"]))
    with OtlpReceiver() as receiver:
        extra = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": "orbit-exports-under-test",
            # The SDK's batch goes out every 50 ms instead of every 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": f"orbit-test-{uuid.uuid4().hex[:8]}:",
        }
        with server_process(cli_env, tmp_path, extra) as url, httpx.Client(base_url=url) as http:
            for probe in PROBES:
                assert http.get(probe).status_code == 200
            by_key = http.get(path, headers={"X-API-Key": key})
            by_jwt = http.get(path, headers={"Authorization": f"Bearer {token}"})
            missing = http.get(
                path.rsplit("/", 1)[0] + f"/{uuid.uuid4()}", headers={"X-API-Key": key}
            )
            assert (by_key.status_code, by_jwt.status_code, missing.status_code) == (200, 200, 404)
            request_ids = [r.headers["X-Request-ID"] for r in (by_key, by_jwt, missing)]

            def all_three_arrived(spans: list[ReceivedSpan]) -> bool:
                seen = {s.attributes.get("orbit.request_id") for s in spans if s.kind == "SERVER"}
                return seen >= set(request_ids)

            # A request's span ends after its children, so they are in by then.
            spans = receiver.wait_for(all_three_arrived, 20, "the requests' server spans")

    servers = {s.attributes["orbit.request_id"]: s for s in spans if s.kind == "SERVER"}
    assert len([s for s in spans if s.kind == "SERVER"]) == 3, "one server span per request"
    assert not {s.attributes.get("url.path") for s in spans} & set(PROBES), "a probe was traced"
    traces = {s.trace_id for s in servers.values()}
    assert len(traces) == 3
    assert {s.trace_id for s in spans} == traces, "a span outside the requests' traces"
    assert {s.resource.get("service.name") for s in spans} == {"orbit-exports-under-test"}

    key_span, jwt_span, missing_span = (servers[rid] for rid in request_ids)
    for span, status, auth in (
        (key_span, 200, "api_key"),
        (jwt_span, 200, "jwt"),
        (missing_span, 404, "api_key"),
    ):
        assert span.name == f"GET {ROUTE}"
        assert span.attributes["http.route"] == ROUTE
        assert span.attributes["http.response.status_code"] == status
        assert span.attributes["orbit.organization_id"] == str(tenant.org)
        assert span.attributes["orbit.auth"] == auth
    assert missing_span.attributes["orbit.error_code"] == "EXPORT_NOT_FOUND"

    def children(parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in spans if s.parent_span_id == parent.span_id]

    first = children(key_span)
    scopes = {s.scope.rsplit(".", 1)[-1] for s in first}
    # The key's lookup and the export's, the rate limit's and the token cache's Redis
    # commands, and the one B2 call that minted the download token.
    assert {"asyncpg", "redis", "requests"} <= scopes, scopes
    statements = [s for s in first if s.scope.endswith("asyncpg")]
    assert len(statements) == 2, [s.attributes for s in statements]
    b2_calls = [s.attributes["http.url"] for s in first if s.scope.endswith("requests")]
    # b2sdk looks the bucket's id up once, then asks for the download authorization.
    assert [urlsplit(u).path.rsplit("/", 1)[-1] for u in b2_calls] == [
        "b2_list_buckets",
        "b2_get_download_authorization",
    ]
    assert all(not urlsplit(u).query for u in b2_calls)
    # The token was minted once: the JWT's request found it in the cache, without B2.
    assert not [s for s in children(jwt_span) if s.scope.endswith("requests")]
    assert all(not children(s) for s in first), "a span per row or per pool operation"

    download_url = by_key.json()["data"]["downloadUrl"]
    download_token = parse_qs(urlsplit(download_url).query)["Authorization"][0]
    secrets = {key, token, JWT_SECRET, B2_KEY, download_url, download_token}
    for span in spans:
        for name, value in [*span.attributes.items(), *span.resource.items()]:
            leaked = [s for s in secrets if s in str(value)]
            assert not leaked, f"{span.name}: {name} holds a secret"
            assert "authorization" not in name.lower(), f"{span.name}: {name}"
