"""Uploading export files: to B2 (or the emulator) with b2sdk's public API, or, for the s3
signer, through the S3 API with botocore."""

from __future__ import annotations

from app.core.settings import Settings


def upload(settings: Settings, bucket_name: str, file_name: str, data: bytes) -> str | None:
    """Upload `data`; returns B2's file id (None through the S3 API, which has none)."""
    if settings.storage_signer == "s3":
        from orbit_dev.s3 import s3_client

        s3_client(settings).put_object(
            Bucket=bucket_name, Key=file_name, Body=data, ContentType="text/csv"
        )
        return None
    from b2sdk.v2 import B2Api, InMemoryAccountInfo

    api = B2Api(InMemoryAccountInfo())
    assert settings.b2_application_key_id and settings.b2_application_key
    api.authorize_account(
        settings.b2_realm,
        settings.b2_application_key_id,
        settings.b2_application_key.get_secret_value(),
    )
    uploaded = api.get_bucket_by_name(bucket_name).upload_bytes(
        data, file_name, content_type="text/csv"
    )
    return str(uploaded.id_)
