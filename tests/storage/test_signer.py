"""Signing through b2sdk's real HTTP path: authorization reuse, re-authorization, deadlines,
and B2 failures turned into 503 STORAGE_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.storage.signer import content_disposition
from tests.support.app import MakeSettings, bearer, download, serve
from tests.support.constants import BUCKET
from tests.support.emulator import Emulator
from tests.support.processes import free_port
from tests.support.storage import make_signer
from tests.support.waiting import wait_until
from tests.support.world import Tenant, World


@pytest.fixture
def blackhole() -> Iterator[str]:
    """Accepts TCP connections and never answers: a B2 slower than any deadline."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def assert_storage_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) > 0


async def test_account_is_authorized_once_per_process(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    exports = [await world.export(tenant) for _ in range(3)]
    emulator.clear()
    async with serve(make_settings()) as client:
        headers = bearer(world.jwt(tenant.org))
        for export in exports:
            assert (await client.get(tenant.path(export["id"]), headers=headers)).status_code == 200
    assert emulator.calls("b2_authorize_account") == 1
    assert emulator.calls("b2_list_buckets") == 1
    assert emulator.calls("b2_get_download_authorization") == 3


async def test_expired_account_token_is_renewed_transparently(
    client: httpx.AsyncClient, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    warm, export = await world.export(tenant), await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    assert (await client.get(tenant.path(warm["id"]), headers=headers)).status_code == 200
    emulator.clear()
    emulator.advance_clock(25 * 3600)
    try:
        response = await client.get(tenant.path(export["id"]), headers=headers)
    finally:
        emulator.advance_clock(-25 * 3600)
    assert response.status_code == 200
    assert emulator.calls("b2_authorize_account") == 1
    assert (await download(response.json()["data"]["downloadUrl"])).content == export["content"]


async def test_unreachable_b2_is_503_storage_unavailable(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    settings = make_settings(b2_realm=f"http://127.0.0.1:{free_port()}")
    async with serve(settings) as client:
        started = time.monotonic()
        response = await client.get(
            tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
        )
    assert_storage_unavailable(response)
    assert time.monotonic() - started < 3.5


async def test_b2_slower_than_the_deadline_is_503_within_the_deadline(
    make_settings: MakeSettings, world: World, tenant: Tenant, blackhole: str
) -> None:
    export = await world.export(tenant)
    settings = make_settings(b2_realm=blackhole, storage_timeout_seconds=0.5)
    async with serve(settings) as client:
        headers = bearer(world.jwt(tenant.org))
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.get(tenant.path(export["id"]), headers=headers) for _ in range(3))
        )
        elapsed = time.monotonic() - started
    for response in responses:
        assert_storage_unavailable(response)
    assert elapsed < 1.5


async def test_wrong_b2_credentials_are_503_storage_unavailable(
    make_settings: MakeSettings, world: World, tenant: Tenant
) -> None:
    export = await world.export(tenant)
    async with serve(make_settings(b2_application_key="wrong-key-0123456789")) as client:
        response = await client.get(
            tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org))
        )
    assert_storage_unavailable(response)


async def test_missing_bucket_is_502_storage_error(
    client: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    """A row naming a bucket B2 does not have is that export's problem, not an outage."""
    export = await world.export(tenant, bucket_name="no-such-bucket")
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "STORAGE_ERROR"


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("exports/a/b/file.csv", 'attachment; filename="file.csv"'),
        ("plain.csv", 'attachment; filename="plain.csv"'),
        (
            'we"ird;name.csv',
            "attachment; filename=\"we_ird_name.csv\"; filename*=UTF-8''we%22ird%3Bname.csv",
        ),
        ("dir/", 'attachment; filename="export.csv"'),
    ],
)
def test_content_disposition_is_a_safe_attachment(file_name: str, expected: str) -> None:
    assert content_disposition(file_name) == expected


async def test_account_is_reauthorized_once_when_old_even_under_concurrency(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    now = [1000.0]
    with make_signer(
        make_settings(b2_reauthorize_after_seconds=600, export_url_cache_size=0),
        monotonic=lambda: now[0],
    ) as (signer, _):
        emulator.clear()
        await signer.sign(export["bucket_name"], export["file_name"], None)
        assert emulator.calls("b2_authorize_account") == 1

        now[0] += 599
        await asyncio.gather(
            *(signer.sign(export["bucket_name"], export["file_name"], None) for _ in range(4))
        )
        assert emulator.calls("b2_authorize_account") == 1

        now[0] += 2
        await asyncio.gather(
            *(signer.sign(export["bucket_name"], export["file_name"], None) for _ in range(6))
        )
        assert emulator.calls("b2_authorize_account") == 2
        # Concurrent signs of one file share one call (the cache itself is off here).
        assert emulator.calls("b2_get_download_authorization") == 3


ODD_NAMES = [
    "with space.csv",
    "q?x=1&y=2.csv",
    "hash#fragment.csv",
    "ünïcødé-名前.csv",
    "a..b/..c..csv",
    "plus+sign.csv",
    "percent%20encoded.csv",
    "semi;colon,comma.csv",
]


@pytest.mark.parametrize("name", ODD_NAMES)
async def test_odd_file_names_download_exactly_that_file(
    client: httpx.AsyncClient, world: World, tenant: Tenant, name: str
) -> None:
    """Each URL opens its own object: the name is percent-encoded in the path, so `?`, `#`,
    `%`, spaces and non-ASCII characters are part of the name, not of the query or fragment.
    A sibling whose name the unencoded URL would reach gets no say."""
    folder = f"exports/{uuid.uuid4()}/"
    content = f"name\n{name}\n".encode()
    export = await world.export(tenant, content=content, file_name=folder + name)
    # Objects an unencoded URL would open instead (the part before ? or #).
    bucket = world.b2.get_bucket_by_name(BUCKET)
    for decoy in {name.split("?")[0], name.split("#")[0]} - {name}:
        await asyncio.to_thread(bucket.upload_bytes, b"decoy\n", folder + decoy)
    response = await client.get(tenant.path(export["id"]), headers=bearer(world.jwt(tenant.org)))
    assert response.status_code == 200, response.text
    downloaded = await download(response.json()["data"]["downloadUrl"])
    assert downloaded.status_code == 200
    assert downloaded.content == content
    assert downloaded.headers["Content-Disposition"] == content_disposition(folder + name)


async def test_a_caller_waiting_on_anothers_mint_never_gets_a_url_outliving_its_export(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    """Two requests for one file at once: the first (an export without expiry) mints, the
    second waits for that mint; its own export expires in two minutes, so it must not take
    the hour-long token."""
    from datetime import timedelta

    from app.core.clock import utc_now

    export = await world.export(tenant)
    emulator.clear()
    emulator.inject(delaySeconds=0.3, apis=["b2_get_download_authorization"], count=1)
    try:
        with make_signer(make_settings(export_url_ttl_seconds=3600)) as (signer, _):
            soon = utc_now() + timedelta(seconds=120)
            bucket, name = export["bucket_name"], export["file_name"]
            first = asyncio.create_task(signer.sign(bucket, name, None))
            await wait_until(
                lambda: emulator.calls("b2_get_download_authorization") >= 1,
                within=5,
                what="the first request is minting (at B2)",
            )
            second = await signer.sign(bucket, name, soon)
            assert second.expires_at <= soon
            assert (await first).expires_at > soon
    finally:
        emulator.clear_faults()
