"""Response bodies, field for field as in the contract.

See `shared/spec/get-stored-export.openapi.yaml`; names and nullability must not drift from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, from_attributes=True)


class IntentAudienceExport(CamelModel):
    id: UUID
    organization_id: UUID
    audience_id: UUID
    run_id: UUID
    export_type: Literal["csv"]
    status: Literal["processing", "completed", "failed"]
    storage_provider: Literal["b2"]
    bucket_name: str | None
    file_id: str | None
    file_name: str | None
    content_type: str
    byte_size: int
    row_count: int
    content_sha1: str | None
    error_code: str | None
    error_message: str | None
    requested_by: UUID | None
    completed_at: datetime | None
    expires_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


class IntentAudienceExportWithUrl(CamelModel):
    export: IntentAudienceExport
    download_url: str | None = Field(json_schema_extra={"format": "uri"})
    download_url_expires_at: datetime | None
    download_url_ttl_seconds: int | None


class ApiMeta(BaseModel):
    timestamp: datetime
    request_id: str


class StoredExportResponse(BaseModel):
    data: IntentAudienceExportWithUrl
    meta: ApiMeta


class ApiErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ApiErrorResponse(BaseModel):
    error: ApiErrorBody
    meta: ApiMeta
