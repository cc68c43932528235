"""GET /v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}: the happy path and every
export-state outcome, through real keys, real JWTs, Postgres and the B2 emulator."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.app import MakeSettings, bearer, download, key_headers, serve
from tests.support.emulator import Emulator
from tests.support.world import Tenant, World


def _without_meta(body: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in body.items() if k != "meta"}


async def test_completed_export_with_api_key_returns_working_signed_url(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    key = await world.api_key(tenant.org)

    before = datetime.now(UTC)
    response = await client.get(tenant.path(export["id"]), headers=key_headers(key))
    after = datetime.now(UTC)

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["export"]["id"] == str(export["id"])
    assert data["export"]["organizationId"] == str(tenant.org)
    assert data["export"]["status"] == "completed"
    assert data["export"]["fileName"] == export["file_name"]
    assert data["export"]["byteSize"] == len(export["content"])
    assert data["export"]["rowCount"] == export["row_count"]
    assert data["downloadUrlTtlSeconds"] == 3600
    expires = datetime.fromisoformat(data["downloadUrlExpiresAt"])
    assert before + timedelta(seconds=3600) <= expires <= after + timedelta(seconds=3600)

    fetched = await download(data["downloadUrl"])
    assert fetched.status_code == 200
    assert fetched.content == export["content"]
    name = export["file_name"].rsplit("/", 1)[-1]
    assert fetched.headers["Content-Disposition"] == f'attachment; filename="{name}"'


async def test_completed_export_with_dashboard_jwt(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 200
    assert (await download(response.json()["data"]["downloadUrl"])).content == export["content"]


async def test_every_contract_field_is_returned_with_row_values(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    expires_at = datetime.now(UTC) + timedelta(days=7)
    export = await world.export(tenant, expires_at=expires_at)
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    body = response.json()["data"]["export"]
    assert body == {
        "id": str(export["id"]),
        "organizationId": str(tenant.org),
        "audienceId": str(tenant.audience),
        "runId": str(tenant.run),
        "exportType": "csv",
        "status": "completed",
        "storageProvider": "b2",
        "bucketName": export["bucket_name"],
        "fileId": export["file_id"],
        "fileName": export["file_name"],
        "contentType": "text/csv",
        "byteSize": export["byte_size"],
        "rowCount": export["row_count"],
        "contentSha1": export["content_sha1"],
        "errorCode": None,
        "errorMessage": None,
        "requestedBy": str(export["requested_by"]),
        "completedAt": export["completed_at"].isoformat().replace("+00:00", "Z"),
        "expiresAt": export["expires_at"].isoformat().replace("+00:00", "Z"),
        "createdAt": export["created_at"].isoformat().replace("+00:00", "Z"),
        "updatedAt": export["updated_at"].isoformat().replace("+00:00", "Z"),
    }


async def test_ttl_is_clamped_to_the_exports_own_expiry(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    expires_at = datetime.now(UTC) + timedelta(seconds=600)
    export = await world.export(tenant, expires_at=expires_at)
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    data = response.json()["data"]
    assert 595 <= data["downloadUrlTtlSeconds"] <= 600
    assert datetime.fromisoformat(data["downloadUrlExpiresAt"]) <= expires_at


async def test_ttl_follows_the_configured_setting(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    async with serve(make_settings(export_url_ttl_seconds=120)) as client:
        response = await client.get(
            tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
        )
    data = response.json()["data"]
    assert data["downloadUrlTtlSeconds"] == 120
    emulator.advance_clock(121)
    try:
        assert (await download(data["downloadUrl"])).status_code == 401
    finally:
        emulator.advance_clock(-121)


async def test_expired_export_is_404_export_expired(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "EXPORT_EXPIRED"


async def test_processing_export_is_409_not_ready(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant, status="processing")
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "EXPORT_NOT_READY"


async def test_failed_export_is_409_with_the_rows_error(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(
        tenant, status="failed", error_code="ROW_LIMIT", error_message="Too many rows to export."
    )
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "EXPORT_FAILED"
    assert error["details"] == {
        "errorCode": "ROW_LIMIT",
        "errorMessage": "Too many rows to export.",
    }


async def test_missing_export_is_404_not_found(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    response = await client.get(tenant.path(uuid.uuid4()), headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "EXPORT_NOT_FOUND"


@pytest.mark.parametrize("credential", ["api_key", "jwt"])
async def test_other_organizations_export_is_indistinguishable_from_missing(
    client: httpx.AsyncClient, world: World, tenant: Tenant, credential: str
) -> None:
    export = await world.export(tenant)
    intruder = world.tenant()
    if credential == "api_key":
        headers = key_headers(await world.api_key(intruder.org))
    else:
        headers = bearer(world.jwt(intruder.org))
    stolen = await client.get(tenant.path(export["id"]), headers=headers)
    missing = await client.get(tenant.path(uuid.uuid4()), headers=headers)
    assert stolen.status_code == missing.status_code == 404
    assert _without_meta(stolen.json()) == _without_meta(missing.json())


@pytest.mark.parametrize("wrong", ["audience", "run"])
async def test_export_under_another_audience_or_run_is_404(
    client: httpx.AsyncClient, world: World, tenant: Tenant, wrong: str
) -> None:
    export = await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    path = tenant.path(export["id"], **{wrong: uuid.uuid4()})
    mismatched = await client.get(path, headers=headers)
    missing = await client.get(tenant.path(uuid.uuid4()), headers=headers)
    assert mismatched.status_code == 404
    assert _without_meta(mismatched.json()) == _without_meta(missing.json())


async def test_storage_not_configured_is_503(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    settings = make_settings(b2_application_key_id=None, b2_application_key=None)
    async with serve(settings) as client:
        response = await client.get(
            tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "STORAGE_NOT_CONFIGURED"


async def test_storage_not_configured_still_answers_409_and_404(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    processing = await world.export(tenant, status="processing")
    settings = make_settings(b2_application_key_id=None, b2_application_key=None)
    async with serve(settings) as client:
        headers = bearer(world.jwt(tenant.org))
        assert (await client.get(tenant.path(processing["id"]), headers=headers)).status_code == 409
        assert (await client.get(tenant.path(uuid.uuid4()), headers=headers)).status_code == 404


async def test_signed_url_uses_the_request_clock_before_minting(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    data = response.json()["data"]
    reported = datetime.fromisoformat(data["downloadUrlExpiresAt"])
    stamped = datetime.fromisoformat(response.json()["meta"]["timestamp"])
    # Expiry = clock read before minting + TTL, so never after the response's own time + TTL.
    assert reported <= stamped + timedelta(seconds=data["downloadUrlTtlSeconds"])


async def test_download_url_names_only_this_file(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    first = await world.export(tenant)
    second = await world.export(tenant)
    response = await client.get(tenant.path(first["id"]), headers=bearer(world.jwt(tenant.org)))
    url = response.json()["data"]["downloadUrl"]
    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"Authorization", "b2ContentDisposition"}
    other_url = url.replace(str(first["id"]), str(second["id"]))
    assert (await download(other_url)).status_code == 401


async def test_tampered_or_stripped_download_url_fails(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    url = response.json()["data"]["downloadUrl"]
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    token = query["Authorization"][0]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    disposition = query["b2ContentDisposition"][0]
    assert (
        await download(
            base, params={"Authorization": tampered, "b2ContentDisposition": disposition}
        )
    ).status_code == 401
    assert (await download(base, params={"Authorization": token})).status_code == 401
    assert (
        await download(base, params={"Authorization": token, "b2ContentDisposition": "inline"})
    ).status_code == 401
    assert (await download(url)).status_code == 200


async def test_expired_download_token_fails(
    client: httpx.AsyncClient, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    data = response.json()["data"]
    emulator.advance_clock(data["downloadUrlTtlSeconds"] + 1)
    try:
        assert (await download(data["downloadUrl"])).status_code == 401
    finally:
        emulator.advance_clock(-(data["downloadUrlTtlSeconds"] + 1))
    assert (await download(data["downloadUrl"])).status_code == 200


async def test_non_ascii_file_name_gets_rfc6266_disposition(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    name = f"exports/{tenant.org}/Zielgruppe Ü-{uuid.uuid4().hex[:6]}.csv"
    export = await world.export(tenant, file_name=name)
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    fetched = await download(response.json()["data"]["downloadUrl"])
    assert fetched.status_code == 200
    assert fetched.content == export["content"]
    disposition = fetched.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="Zielgruppe__-')
    assert "filename*=UTF-8''Zielgruppe%20%C3%9C-" in disposition
