"""A row's bucket cannot point a URL elsewhere: names outside B2's rules (rows written before
migration 0005) and, with ALLOWED_BUCKETS, buckets not listed get 502 STORAGE_ERROR and no URL;
with virtual-hosted S3 addressing the URL's host is always `<bucket>.<endpoint host>`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from app.core.errors import StorageError
from app.core.settings import Settings
from app.storage.s3_signer import S3Signer
from app.storage.token_cache import InMemoryTokenCache
from tests.support.app import MakeSettings, bearer, serve
from tests.support.constants import BUCKET
from tests.support.emulator import Emulator
from tests.support.storage import make_signer
from tests.support.world import Tenant, World

OUTSIDE_B2_RULES = [
    "evil.example.com",
    "bucket/../other",
    "short",
    "a" * 64,
    "b2-reserved-name",
    "bucket?x=1",
    "bucket#frag",
    "user@host",
]


@pytest.mark.parametrize("bucket", OUTSIDE_B2_RULES)
async def test_the_native_signer_refuses_a_bucket_outside_b2s_rules(
    make_settings: MakeSettings, bucket: str
) -> None:
    with make_signer(make_settings()) as (signer, _), pytest.raises(StorageError):
        await signer.sign(bucket, "exports/a.csv", None)


def s3_settings(style: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        storage_signer="s3",
        s3_endpoint_url="https://s3.us-west-004.backblazeb2.com",
        s3_region="us-west-004",
        s3_access_key_id="004abc",
        s3_secret_access_key="s3-secret-0123456789abcdef",
        s3_addressing_style=style,
    )


@pytest.mark.parametrize("style", ["virtual", "path"])
@pytest.mark.parametrize("bucket", OUTSIDE_B2_RULES)
async def test_the_s3_signer_refuses_a_bucket_outside_b2s_rules(bucket: str, style: str) -> None:
    signer = S3Signer(s3_settings(style), InMemoryTokenCache(10, 60))
    with pytest.raises(StorageError):
        await signer.sign(bucket, "exports/a.csv", None)
    with pytest.raises(StorageError):
        signer.presign(bucket, "exports/a.csv", 600)


async def test_virtual_hosted_urls_keep_the_endpoints_host() -> None:
    signer = S3Signer(s3_settings("virtual"), InMemoryTokenCache(10, 60))
    signed = await signer.sign("orbit-exports", "exports/a.csv", None)
    assert urlsplit(signed.url).hostname == "orbit-exports.s3.us-west-004.backblazeb2.com"


async def test_a_bucket_not_in_allowed_buckets_is_a_502_without_a_url(
    make_settings: MakeSettings, world: World, tenant: Tenant, emulator: Emulator
) -> None:
    export = await world.export(tenant)
    headers = bearer(world.jwt(tenant.org))
    elsewhere = make_settings(allowed_buckets=["another-bucket"])
    listed = make_settings(allowed_buckets=["another-bucket", BUCKET])
    async with serve(elsewhere) as refusing, serve(listed) as signing:
        emulator.clear()
        refused = await refusing.get(tenant.path(export["id"]), headers=headers)
        signed = await signing.get(tenant.path(export["id"]), headers=headers)
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "STORAGE_ERROR"
    assert "downloadUrl" not in refused.text
    assert emulator.calls("b2_get_download_authorization") == 1  # the listed one's only
    assert signed.status_code == 200
    assert datetime.fromisoformat(signed.json()["data"]["downloadUrlExpiresAt"]) > datetime.now(
        UTC
    ) + timedelta(minutes=1)


def test_allowed_buckets_takes_only_b2_bucket_names() -> None:
    assert Settings(_env_file=None, allowed_buckets="orbit-one, orbit-two").allowed_buckets == [  # type: ignore[call-arg]
        "orbit-one",
        "orbit-two",
    ]
    with pytest.raises(ValidationError, match="ALLOWED_BUCKETS takes B2 bucket names"):
        Settings(_env_file=None, allowed_buckets="evil.example.com")  # type: ignore[call-arg]
