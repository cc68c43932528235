"""Response bodies, field for field as in the contract.

See `contract/get-stored-export.openapi.yaml`; names and nullability must not drift from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel

from app.api.envelope import ApiMeta
from app.db.tables import ExportStatus


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, from_attributes=True)


# Fields the contract does not list as required default to None, so the generated OpenAPI
# has the contract's `required` lists exactly (tests/api/test_openapi.py).
class IntentAudienceExport(CamelModel):
    id: UUID
    organization_id: UUID
    audience_id: UUID
    run_id: UUID
    export_type: Literal["csv"]
    status: ExportStatus
    storage_provider: Literal["b2"]
    bucket_name: str | None = None
    file_id: str | None = None
    file_name: str | None = None
    content_type: str
    byte_size: int
    row_count: int
    content_sha1: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    requested_by: UUID | None = None
    completed_at: datetime | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class IntentAudienceExportWithUrl(CamelModel):
    export: IntentAudienceExport
    download_url: Annotated[str, WithJsonSchema({"type": "string", "format": "uri"})] | None
    download_url_expires_at: datetime | None
    download_url_ttl_seconds: int | None


class StoredExportResponse(BaseModel):
    data: IntentAudienceExportWithUrl
    meta: ApiMeta
