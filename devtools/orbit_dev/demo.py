"""Demo data for `make run` and the compose stack's demo (`orbit-dev run`).

The demo organization, audience, run and exports have fixed ids, so every start finds the same
rows: the first start creates them (and an API key, shown once), later starts reuse them. The
sample CSV is uploaded again at each start because the emulator keeps files in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import jwt
from sqlalchemy import and_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.auth.api_keys import create_api_key
from app.core.settings import Settings
from app.db.engine import create_engine
from app.db.tables import api_keys, intent_audience_exports
from orbit_dev.uploads import upload

ORG = uuid.UUID("0de30000-0000-4000-8000-000000000001")
AUDIENCE = uuid.UUID("0de30000-0000-4000-8000-000000000002")
RUN = uuid.UUID("0de30000-0000-4000-8000-000000000003")
USER = uuid.UUID("0de30000-0000-4000-8000-000000000004")
COMPLETED = uuid.UUID("0de30000-0000-4000-8000-0000000000c1")
PROCESSING = uuid.UUID("0de30000-0000-4000-8000-0000000000c2")
FAILED = uuid.UUID("0de30000-0000-4000-8000-0000000000c3")
KEY_NAME = "demo"
SAMPLE_ROWS = 300
TOKEN_TTL = timedelta(hours=24)

_INDUSTRIES = [
    "Software", "Financial Services", "Healthcare", "Manufacturing", "Retail", "Logistics",
    "Telecommunications", "Energy", "Education", "Media",
]  # fmt: skip
_SIZES = ["1-10", "11-50", "51-200", "201-500", "501-1000", "1001-5000", "5001+"]
_COUNTRIES = ["US", "GB", "DE", "FR", "NL", "CA", "AU", "SE", "ES", "IE"]
_TOPICS = [
    "Customer Data Platform", "Zero Trust Security", "Cloud Cost Optimization",
    "Sales Engagement", "Data Warehousing", "Identity Management", "Marketing Automation",
    "Observability", "Payments Infrastructure", "Employee Experience",
]  # fmt: skip
_WORDS = [
    "North", "Blue", "Iron", "Bright", "Summit", "Harbor", "Nova", "Pine", "Atlas", "Cobalt",
    "Vertex", "Silver", "Maple", "Quantum", "River", "Granite", "Orbit", "Echo", "Falcon", "Lumen",
]  # fmt: skip
_SUFFIXES = ["Labs", "Systems", "Group", "Analytics", "Health", "Logistics", "Partners", "Works"]


def sample_csv() -> bytes:
    """A deterministic intent-audience export: one account per row with its strongest topic."""
    rng = random.Random(20261128)  # noqa: S311 - sample data, not security
    lines = [
        "company_name,domain,industry,employee_range,country,"
        "intent_topic,intent_score,surge_week,contact_email"
    ]
    for i in range(SAMPLE_ROWS):
        first, second = rng.sample(_WORDS, 2)
        name = f"{first} {second} {rng.choice(_SUFFIXES)}"
        domain = f"{first}{second}{i}".lower() + rng.choice([".com", ".io", ".co", ".net"])
        surge = date(2026, 11, 2) + timedelta(weeks=rng.randrange(4))
        lines.append(
            ",".join(
                [
                    f'"{name}"',
                    domain,
                    f'"{rng.choice(_INDUSTRIES)}"',
                    rng.choice(_SIZES),
                    rng.choice(_COUNTRIES),
                    f'"{rng.choice(_TOPICS)}"',
                    str(rng.randint(55, 100)),
                    surge.isoformat(),
                    f"{rng.choice(['ops', 'it', 'marketing', 'sales', 'data'])}@{domain}",
                ]
            )
        )
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True)
class DemoData:
    api_key: str | None
    key_prefix: str | None
    token: str
    sample_path: Path

    def path(self, export_id: uuid.UUID) -> str:
        return f"/v1/intent/audiences/{AUDIENCE}/runs/{RUN}/exports/{export_id}"


def _file_name() -> str:
    return f"exports/{ORG}/{AUDIENCE}/{RUN}/{COMPLETED}.csv"


async def _seed_rows(conn: AsyncConnection, bucket: str, file_id: str | None, data: bytes) -> None:
    now = datetime.now(UTC)
    common = {"organization_id": ORG, "audience_id": AUDIENCE, "run_id": RUN, "requested_by": USER}
    completed = {
        **common,
        "id": COMPLETED,
        "status": "completed",
        "bucket_name": bucket,
        "file_name": _file_name(),
        "file_id": file_id,
        "byte_size": len(data),
        "row_count": SAMPLE_ROWS,
        "content_sha1": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
        "completed_at": now,
    }
    statement = pg_insert(intent_audience_exports).values(completed)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["id"],
            set_={"file_id": statement.excluded.file_id, "bucket_name": bucket, "updated_at": now},
        )
    )
    others = [
        {**common, "id": PROCESSING, "status": "processing"},
        {
            **common,
            "id": FAILED,
            "status": "failed",
            "error_code": "ROW_LIMIT_EXCEEDED",
            "error_message": "The audience has more rows than the export limit allows.",
        },
    ]
    await conn.execute(
        pg_insert(intent_audience_exports)
        .values(others)
        .on_conflict_do_nothing(index_elements=["id"])
    )


async def _ensure_key(conn: AsyncConnection) -> tuple[str | None, str | None]:
    existing = (
        await conn.execute(
            select(api_keys.c.prefix).where(
                and_(api_keys.c.organization_id == ORG, api_keys.c.name == KEY_NAME),
                api_keys.c.revoked_at.is_(None),
            )
        )
    ).first()
    if existing is not None:
        return None, str(existing.prefix)
    key, record = await create_api_key(conn, ORG, KEY_NAME)
    return key, record.prefix


def seed(settings: Settings, bucket: str) -> DemoData:
    """Create or refresh the demo data; returns what to show the person starting the demo."""
    data = sample_csv()
    sample_path = settings.orbit_data_dir / "demo" / "audience-sample.csv"
    sample_path.parent.mkdir(parents=True, exist_ok=True)
    sample_path.write_bytes(data)
    file_id = upload(settings, bucket, _file_name(), data)

    async def run() -> tuple[str | None, str | None]:
        assert settings.database_url is not None
        engine = create_engine(settings, settings.database_url.get_secret_value())
        try:
            async with engine.begin() as conn:
                await _seed_rows(conn, bucket, file_id, data)
                return await _ensure_key(conn)
        finally:
            await engine.dispose()

    key, prefix = asyncio.run(run())
    assert settings.jwt_secret is not None
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": str(USER),
        settings.jwt_org_claim: str(ORG),
        "iat": now,
        "exp": now + TOKEN_TTL,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    token = jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
    return DemoData(api_key=key, key_prefix=prefix, token=token, sample_path=sample_path)


def instructions(demo: DemoData, base_url: str) -> str:
    key = demo.api_key or "<your demo key>"
    lines = ["", "orbit-exports demo", "=" * 18, ""]
    if demo.api_key:
        lines += [
            "API key (shown only now; store it):",
            f"  {demo.api_key}",
        ]
    else:
        lines += [
            f"The demo API key ({demo.key_prefix}...) was shown at the first start and cannot be",
            "shown again. Make a new one with:",
            f"  .venv/bin/orbit-exports api-keys create --org {ORG} --name demo-2",
        ]
    lines += [
        "",
        "Dashboard JWT (valid 24 h, minted at each start):",
        f"  {demo.token}",
        "",
        "200 - the completed export with a fresh signed download URL:",
        f"  curl -s -H 'X-API-Key: {key}' {base_url}{demo.path(COMPLETED)}",
        "",
        "    ...the same with the dashboard JWT:",
        f"  curl -s -H 'Authorization: Bearer {demo.token}' {base_url}{demo.path(COMPLETED)}",
        "",
        "    ...and download the CSV through the returned URL:",
        f"  curl -s -H 'X-API-Key: {key}' {base_url}{demo.path(COMPLETED)} \\",
        "    | python3 -c 'import json,sys;"
        ' print(json.load(sys.stdin)["data"]["downloadUrl"])\' \\',
        "    | xargs curl -s -o audience.csv",
        "",
        "409 - an export that is still processing:",
        f"  curl -s -H 'X-API-Key: {key}' {base_url}{demo.path(PROCESSING)}",
        "",
        "409 - an export that failed:",
        f"  curl -s -H 'X-API-Key: {key}' {base_url}{demo.path(FAILED)}",
        "",
        "404 - no such export:",
        f"  curl -s -H 'X-API-Key: {key}' {base_url}{demo.path(uuid.UUID(int=0))}",
        "",
        f"Sample CSV served by the demo: {demo.sample_path}",
        "Stop with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)
