"""botocore's S3 client for the developer tools: uploading demo files and creating the bucket
in the local S3 server (SeaweedFS). The service itself only presigns (`app.storage.s3_signer`)."""

from __future__ import annotations

from typing import Any

from app.core.settings import Settings


def s3_client(settings: Settings) -> Any:
    import botocore.session
    from botocore.config import Config

    key_id, secret = settings.s3_credentials
    return botocore.session.get_session().create_client(
        "s3",
        region_name=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(
            signature_version="s3v4", s3={"addressing_style": settings.s3_addressing_style}
        ),
    )
