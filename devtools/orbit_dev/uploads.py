"""Uploading export files to B2 (or the emulator) with b2sdk's public API."""

from __future__ import annotations

from app.core.settings import Settings


def upload(settings: Settings, bucket_name: str, file_name: str, data: bytes) -> str:
    """Upload `data` with b2sdk's public API; returns the file id."""
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
