"""Tenants, exports, API keys and JWTs, made the way the platform would make them."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from b2sdk.v2 import B2Api
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.api_keys import create_api_key
from app.db.tables import intent_audience_exports
from tests.support.constants import BUCKET, JWT_SECRET
from tests.support.secrets import SECRETS


@dataclass(frozen=True)
class Tenant:
    org: uuid.UUID
    audience: uuid.UUID
    run: uuid.UUID

    def path(self, export_id: uuid.UUID | str, audience: Any = None, run: Any = None) -> str:
        return (
            f"/v1/intent/audiences/{audience or self.audience}"
            f"/runs/{run or self.run}/exports/{export_id}"
        )


def sample_csv(rows: int = 5) -> bytes:
    lines = ["email,company,domain,intent_score"]
    tag = uuid.uuid4().hex[:8]
    lines += [f"user{i}-{tag}@example.com,Company {i},c{i}.example,{50 + i}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


class World:
    """Creates tenants, exports, API keys and JWTs the way the platform would."""

    def __init__(self, db: AsyncEngine, b2: B2Api) -> None:
        self.db = db
        self.b2 = b2

    def tenant(self) -> Tenant:
        return Tenant(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())

    async def export(
        self,
        tenant: Tenant,
        *,
        status: str = "completed",
        content: bytes | None = None,
        file_name: str | None = None,
        **columns: Any,
    ) -> dict[str, Any]:
        export_id = uuid.uuid4()
        values: dict[str, Any] = {
            "id": export_id,
            "organization_id": tenant.org,
            "audience_id": tenant.audience,
            "run_id": tenant.run,
            "status": status,
            "requested_by": uuid.uuid4(),
        }
        if status == "completed":
            data = content if content is not None else sample_csv()
            name = (
                file_name or f"exports/{tenant.org}/{tenant.audience}/{tenant.run}/{export_id}.csv"
            )
            bucket = self.b2.get_bucket_by_name(BUCKET)
            uploaded = await asyncio.to_thread(
                bucket.upload_bytes, data, name, content_type="text/csv"
            )
            values |= {
                "bucket_name": BUCKET,
                "file_name": name,
                "file_id": uploaded.id_,
                "byte_size": len(data),
                "row_count": data.count(b"\n") - 1,
                "content_sha1": uploaded.content_sha1,
                "completed_at": datetime.now(UTC),
                "content": data,
            }
        values |= columns
        content_bytes = values.pop("content", None)
        async with self.db.begin() as conn:
            row = (
                (
                    await conn.execute(
                        insert(intent_audience_exports)
                        .values(**values)
                        .returning(intent_audience_exports)
                    )
                )
                .mappings()
                .one()
            )
        return {**row, "content": content_bytes}

    async def api_key(self, org: uuid.UUID, expires_at: datetime | None = None) -> str:
        async with self.db.begin() as conn:
            key, _ = await create_api_key(conn, org, "test", expires_at)
        SECRETS.add(key)
        return key

    def jwt(
        self,
        org: uuid.UUID | str | None,
        *,
        secret: str = JWT_SECRET,
        algorithm: str = "HS256",
        lifetime: timedelta = timedelta(minutes=5),
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = datetime.now(UTC)
        payload: dict[str, Any] = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + lifetime}
        if org is not None:
            payload["org_id"] = str(org)
        payload |= claims
        payload = {k: v for k, v in payload.items() if v is not None}
        token = jwt.encode(payload, secret, algorithm=algorithm, headers=headers)
        SECRETS.add(token)
        return token
