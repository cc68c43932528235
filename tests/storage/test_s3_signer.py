"""STORAGE_SIGNER=s3: presigned GETs through an S3-compatible API, checked against a real,
independent S3 server (SeaweedFS). The URL opens exactly its object, with the attachment
disposition; tampering, another object's path and expiry are refused; odd names download; the
lifetime is clamped to the export's and to S3's 7 days; and no B2 API call is made at all."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import insert

from app.core.settings import Settings
from app.db.tables import intent_audience_exports as exports
from app.storage.s3_signer import S3Signer
from app.storage.signer import content_disposition
from app.storage.token_cache import InMemoryTokenCache
from tests.fixtures.s3 import ACCESS_KEY, REGION, S3_BUCKET, SECRET_KEY, S3Server
from tests.support.app import MakeSettings, bearer, download, serve
from tests.support.emulator import Emulator
from tests.support.world import Tenant, World


def s3_settings(make_settings: MakeSettings, server: S3Server, **extra: Any) -> Settings:
    """The s3 signer with its own key and no B2 credentials at all."""
    return make_settings(
        storage_signer="s3",
        s3_endpoint_url=server.url,
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SECRET_KEY,
        s3_addressing_style="path",
        b2_application_key_id=None,
        b2_application_key=None,
        **extra,
    )


async def register(
    world: World, tenant: Tenant, name: str, data: bytes, server: S3Server, **columns: Any
) -> dict[str, Any]:
    await asyncio.to_thread(server.put, name, data)
    values = {
        "organization_id": tenant.org,
        "audience_id": tenant.audience,
        "run_id": tenant.run,
        "status": "completed",
        "bucket_name": S3_BUCKET,
        "file_name": name,
        "byte_size": len(data),
        "completed_at": datetime.now(UTC),
    } | columns
    async with world.db.begin() as conn:
        row = (await conn.execute(insert(exports).values(**values).returning(exports))).mappings()
        return dict(row.one())


def auth(world: World, tenant: Tenant) -> dict[str, str]:
    return bearer(world.jwt(tenant.org))


def folder() -> str:
    return f"exports/{uuid.uuid4()}/"


async def test_the_url_downloads_exactly_the_object_with_its_disposition(
    make_settings: MakeSettings, s3_server: S3Server, world: World, tenant: Tenant
) -> None:
    name = folder() + "audience.csv"
    export = await register(world, tenant, name, b"id,score\n1,0.5\n", s3_server)
    async with serve(s3_settings(make_settings, s3_server)) as client:
        response = await client.get(
            tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["export"]["storageProvider"] == "b2"
        got = await download(data["downloadUrl"])
        assert got.status_code == 200, got.text
        assert got.content == b"id,score\n1,0.5\n"
        assert got.headers["Content-Disposition"] == content_disposition(name)
        # A second request reuses the URL while it has enough lifetime left.
        again = await client.get(tenant.path(export["id"]), headers=auth(world, tenant))
        assert again.json()["data"]["downloadUrl"] == data["downloadUrl"]


async def test_a_url_opens_nothing_else(
    make_settings: MakeSettings, s3_server: S3Server, world: World, tenant: Tenant
) -> None:
    base = folder()
    export = await register(world, tenant, base + "x.csv", b"mine\n", s3_server)
    await asyncio.to_thread(s3_server.put, base + "x.csv.bak", b"not yours\n")
    await asyncio.to_thread(s3_server.put, base + "other.csv", b"not yours either\n")
    async with serve(s3_settings(make_settings, s3_server)) as client:
        response = await client.get(
            tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
        )
        url = response.json()["data"]["downloadUrl"]
    assert (await download(url)).content == b"mine\n"
    for forged in (
        url.replace("/x.csv?", "/x.csv.bak?"),  # the native token's prefix hole
        url.replace("/x.csv?", "/other.csv?"),  # another object's path
        url[:-4] + ("0000" if not url.endswith("0000") else "1111"),  # a tampered signature
    ):
        refused = await download(forged)
        assert refused.status_code == 403, (forged, refused.status_code)
        assert b"not yours" not in refused.content


async def test_an_expired_url_is_refused(make_settings: MakeSettings, s3_server: S3Server) -> None:
    """S3 refuses a URL once X-Amz-Date + X-Amz-Expires has passed. The URLs are signed on
    the signer's clock set back, so one is past its expiry and another is not yet, by a
    minute either way, instead of waiting for a real one to run out."""
    name = folder() + "soon.csv"
    await asyncio.to_thread(s3_server.put, name, b"brief\n")
    settings = s3_settings(make_settings, s3_server)
    now = datetime.now(UTC).replace(microsecond=0)

    def signed(ago: int) -> str:
        at = now - timedelta(seconds=ago)
        url = S3Signer(settings, InMemoryTokenCache(0, 0), clock=lambda: at).presign(
            S3_BUCKET, name, 600
        )
        assert parse_qs(urlsplit(url).query)["X-Amz-Date"] == [at.strftime("%Y%m%dT%H%M%SZ")]
        return url

    assert (await download(signed(ago=540))).status_code == 200
    expired = await download(signed(ago=660))
    assert expired.status_code == 403
    assert b"expired" in expired.content.lower(), expired.text


ODD_NAMES = ["with space.csv", "q?x=1&y=2.csv", "hash#frag.csv", "ünïcødé-名前.csv",
             "a..b/..c..csv", "plus+sign.csv", "percent%20encoded.csv"]  # fmt: skip


@pytest.mark.parametrize("odd", ODD_NAMES)
async def test_odd_names_download_exactly_their_object(
    make_settings: MakeSettings, s3_server: S3Server, world: World, tenant: Tenant, odd: str
) -> None:
    base = folder()
    content = f"name\n{odd}\n".encode()
    export = await register(world, tenant, base + odd, content, s3_server)
    for decoy in {odd.split("?")[0], odd.split("#")[0]} - {odd}:
        await asyncio.to_thread(s3_server.put, base + decoy, b"decoy\n")
    async with serve(s3_settings(make_settings, s3_server)) as client:
        response = await client.get(
            tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
        )
    got = await download(response.json()["data"]["downloadUrl"])
    assert got.status_code == 200, got.text
    assert got.content == content
    assert got.headers["Content-Disposition"] == content_disposition(base + odd)


def expires_param(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


async def test_the_lifetime_is_clamped_to_the_export_and_to_seven_days(
    make_settings: MakeSettings, s3_server: S3Server, world: World, tenant: Tenant
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=120)
    short = await register(world, tenant, folder() + "s.csv", b"s\n", s3_server, expires_at=soon)
    long = await register(world, tenant, folder() + "l.csv", b"l\n", s3_server)
    settings = s3_settings(make_settings, s3_server, export_url_ttl_seconds=604_800)
    async with serve(settings) as client:
        headers = bearer(world.jwt(tenant.org))
        clamped = (await client.get(tenant.path(short["id"]), headers=headers)).json()["data"]
        week = (await client.get(tenant.path(long["id"]), headers=headers)).json()["data"]
    assert clamped["downloadUrlTtlSeconds"] <= 120
    assert expires_param(clamped["downloadUrl"]) <= 120
    assert datetime.fromisoformat(clamped["downloadUrlExpiresAt"]) <= soon
    assert expires_param(week["downloadUrl"]) == 604_800
    assert week["downloadUrlTtlSeconds"] <= 604_800


async def test_no_b2_call_no_b2_credentials_and_ready(
    make_settings: MakeSettings,
    s3_server: S3Server,
    world: World,
    tenant: Tenant,
    emulator: Emulator,
) -> None:
    export = await register(world, tenant, folder() + "n.csv", b"n\n", s3_server)
    emulator.clear()
    settings = s3_settings(make_settings, s3_server, export_url_cache_size=0)
    assert not settings.storage_configured  # no B2 key at all
    async with serve(settings) as client:
        before = b2_calls((await client.get("/metrics")).text)
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["data"]["checks"]["storage"] == "ok"
        for _ in range(5):
            response = await client.get(
                tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
            )
            assert response.status_code == 200
        after = b2_calls((await client.get("/metrics")).text)
    assert emulator.requests() == []
    # The counter is the process's (other tests' servers ran here too): none added now.
    assert after == before


def b2_calls(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("orbit_b2_calls_total{")
    )


def test_virtual_hosted_urls_for_b2s_s3_endpoint(make_settings: MakeSettings) -> None:
    settings = make_settings(
        storage_signer="s3",
        s3_endpoint_url="https://s3.us-west-004.backblazeb2.com",
        s3_region="us-west-004",
    )
    started = time.perf_counter()
    signer = S3Signer(settings, InMemoryTokenCache(0, 0))
    url = urlsplit(signer.presign("orbit-exports", "exports/a b.csv", 3600))
    assert time.perf_counter() - started < 2.0
    assert url.scheme == "https" and url.netloc == "orbit-exports.s3.us-west-004.backblazeb2.com"
    assert url.path == "/exports/a%20b.csv"
    query = parse_qs(url.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].split("/")[2] == "us-west-004"
    # The B2 application key is the default S3 credential, as B2's S3 API accepts it.
    assert query["X-Amz-Credential"][0].split("/")[0] == settings.b2_application_key_id
    assert query["response-content-disposition"] == [content_disposition("exports/a b.csv")]


@pytest.mark.parametrize("style", ["virtual", "path"])
@pytest.mark.parametrize("name", ["exports/a.csv", *ODD_NAMES])
def test_urls_match_botocores_presigner(make_settings: MakeSettings, style: str, name: str) -> None:
    """botocore's presigner is the reference: the same host, path and query, parameter for
    parameter; the signatures differ only by the second each was computed in (checked by
    SeaweedFS in the tests above)."""
    from orbit_dev.s3 import s3_client

    settings = make_settings(
        storage_signer="s3",
        s3_endpoint_url="https://s3.us-west-004.backblazeb2.com",
        s3_region="us-west-004",
        s3_addressing_style=style,
    )
    theirs = urlsplit(
        s3_client(settings).generate_presigned_url(
            "get_object",
            Params={
                "Bucket": "orbit-exports",
                "Key": name,
                "ResponseContentDisposition": content_disposition(name),
            },
            ExpiresIn=900,
        )
    )
    signer = S3Signer(settings, InMemoryTokenCache(0, 0))
    ours = urlsplit(signer.presign("orbit-exports", name, 900))
    assert (ours.scheme, ours.netloc, ours.path) == (theirs.scheme, theirs.netloc, theirs.path)
    unstamped = {"X-Amz-Date", "X-Amz-Signature"}
    mine, reference_query = parse_qs(ours.query), parse_qs(theirs.query)
    assert {k: v for k, v in mine.items() if k not in unstamped} == {
        k: v for k, v in reference_query.items() if k not in unstamped
    }
    assert len(mine["X-Amz-Signature"][0]) == 64
