"""An export's file name names one object, related to no other export's: a B2 download token
opens every name that starts with its file name, so the table refuses folder-like names and
names that begin (or are the beginning of) another export's in the same bucket, and the
signer refuses folder-like names of rows written before the rule."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import StorageError
from app.db.tables import intent_audience_exports as exports
from tests.support.app import MakeSettings, bearer, download, serve
from tests.support.constants import BUCKET
from tests.support.storage import make_signer
from tests.support.world import World

FOLDER_LIKE = [
    "",
    "exports/",
    "/",
    "exports/../b.csv",
    "../b.csv",
    "exports/./b.csv",
    "a/.",
    "a/..",
]
ONE_FILE = ["exports/a..b.csv", "exports/..hidden.csv", "exports/report.v2.csv", "a.", "x/.y"]


def row(org: uuid.UUID, file_name: str, bucket: str = BUCKET) -> dict[str, Any]:
    return {
        "organization_id": org,
        "audience_id": uuid.uuid4(),
        "run_id": uuid.uuid4(),
        "status": "completed",
        "bucket_name": bucket,
        "file_name": file_name,
    }


async def register(db: AsyncEngine, org: uuid.UUID, file_name: str, bucket: str = BUCKET) -> Any:
    async with db.begin() as conn:
        return (
            await conn.execute(
                insert(exports).values(**row(org, file_name, bucket)).returning(exports.c.id)
            )
        ).scalar_one()


def unique(name: str) -> str:
    """The name under a folder of its own, so tests never meet each other's files."""
    return f"t/{uuid.uuid4()}/{name}"


@pytest.mark.parametrize("name", FOLDER_LIKE)
async def test_folder_like_names_are_refused(db: AsyncEngine, name: str) -> None:
    with pytest.raises(IntegrityError, match="file_name_is_one_file"):
        await register(db, uuid.uuid4(), name)


@pytest.mark.parametrize("name", ONE_FILE)
async def test_dots_inside_a_segment_are_fine(
    make_settings: MakeSettings, world: World, name: str
) -> None:
    """The table keeps such a name, and the signer's URL for it downloads that file."""
    tenant = world.tenant()
    content = f"name\n{name}\n".encode()
    export = await world.export(tenant, content=content, file_name=unique(name))
    assert export["file_name"].endswith("/" + name)
    with make_signer(make_settings()) as (signer, _):
        signed = await signer.sign(BUCKET, export["file_name"], None)
    got = await download(signed.url)
    assert got.status_code == 200
    assert got.content == content


async def test_names_overlapping_another_exports_are_refused(db: AsyncEngine) -> None:
    org_a, org_b = uuid.uuid4(), uuid.uuid4()
    base = unique("x.csv")
    await register(db, org_a, base)
    for overlapping, org in (
        (base + ".bak", org_b),  # A's token would open it
        (base + ".bak", org_a),  # even within one organization
        (base[:-4], org_b),  # its token would open A's file
        (base, org_b),  # the same object for two organizations
    ):
        with pytest.raises(IntegrityError, match="overlaps the file name of export"):
            await register(db, org, overlapping)
    # The same name in another bucket, a sibling, and the same object again for A are fine.
    fine = [
        (org_b, "another-bucket", base),
        (org_b, BUCKET, base.replace("x.csv", "y.csv")),
        (org_a, BUCKET, base),
    ]
    ids = [await register(db, org, name, bucket=bucket) for org, bucket, name in fine]
    async with db.connect() as conn:
        rows = await conn.execute(
            select(
                exports.c.id, exports.c.organization_id, exports.c.bucket_name, exports.c.file_name
            ).where(exports.c.id.in_(ids))
        )
        stored = {row.id: (row.organization_id, row.bucket_name, row.file_name) for row in rows}
    assert [stored.get(export_id) for export_id in ids] == fine


async def test_renaming_into_an_overlap_is_refused(db: AsyncEngine) -> None:
    org = uuid.uuid4()
    first = unique("a.csv")
    await register(db, org, first)
    second = await register(db, uuid.uuid4(), unique("b.csv"))
    with pytest.raises(IntegrityError, match="overlaps the file name of export"):
        async with db.begin() as conn:
            await conn.execute(
                update(exports).where(exports.c.id == second).values(file_name=first + "2")
            )


@pytest.mark.parametrize("name", FOLDER_LIKE)
async def test_the_signer_refuses_folder_like_names(make_settings: MakeSettings, name: str) -> None:
    with make_signer(make_settings()) as (signer, _), pytest.raises(StorageError):
        await signer.sign(BUCKET, name, None)


async def test_one_organizations_url_does_not_open_anothers_file(
    make_settings: MakeSettings, world: World
) -> None:
    a, b = world.tenant(), world.tenant()
    mine = await world.export(a, content=b"a,b\n1,2\n", file_name=unique("mine.csv"))
    theirs = await world.export(b, content=b"secret,data\n", file_name=unique("theirs.csv"))
    async with serve(make_settings()) as client:
        response = await client.get(a.path(mine["id"]), headers=bearer(world.jwt(a.org)))
        url = response.json()["data"]["downloadUrl"]
        assert (await download(url)).content == b"a,b\n1,2\n"
        stolen = url.replace(
            mine["file_name"].rsplit("/", 1)[-1], theirs["file_name"].rsplit("/", 1)[-1]
        ).replace(mine["file_name"].split("/")[1], theirs["file_name"].split("/")[1])
        assert theirs["file_name"] in stolen
        refused = await download(stolen)
        assert refused.status_code in (401, 403), refused.status_code
        assert b"secret" not in refused.content
