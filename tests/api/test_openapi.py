"""The service's /openapi.json against the binding contract, for the export path: every schema,
field, type, format, nullability, enum and required list the contract has is present and equal.
Additions the service makes on purpose are listed in INTENDED_ADDITIONS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.contract import EXPORT_PATH, spec

ROOT = Path(__file__).resolve().parents[2]

CONTRACT_SCHEMAS = [
    "IntentAudienceExportWithUrl",
    "IntentAudienceExport",
    "ApiMeta",
    "ApiErrorResponse",
    "ApiError",
]
# Statuses the service sends besides the contract's 200/404/409/503, documented on purpose.
INTENDED_ADDITIONS = {"401", "422", "429", "502"}


def _resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def _shape(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """Type, format, nullability and enum of a property, whichever way nullability is spelled."""
    schema = _resolve(schema, document)
    nullable = False
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        rest = [o for o in options if o.get("type") != "null"]
        nullable = len(rest) < len(options)
        schema = _resolve(rest[0], document) if len(rest) == 1 else {"anyOf": rest}
    kinds = schema.get("type")
    if isinstance(kinds, list):
        nullable = nullable or "null" in kinds
        kinds = [k for k in kinds if k != "null"]
        kinds = kinds[0] if len(kinds) == 1 else kinds
    enum = schema.get("enum") or ([schema["const"]] if "const" in schema else None)
    return {"type": kinds, "format": schema.get("format"), "nullable": nullable, "enum": enum}


async def test_generated_openapi_matches_the_contract(client: httpx.AsyncClient) -> None:
    ours = (await client.get("/openapi.json")).json()
    contract = spec()
    for name in CONTRACT_SCHEMAS:
        theirs = contract["components"]["schemas"][name]
        mine = ours["components"]["schemas"].get(name)
        assert mine is not None, f"schema {name} is missing"
        assert sorted(mine.get("required", [])) == sorted(theirs.get("required", [])), name
        assert set(mine["properties"]) == set(theirs["properties"]), name
        for field, definition in theirs["properties"].items():
            if definition == {}:  # "any value" (ApiError.details)
                continue
            expected = _shape(definition, contract)
            actual = _shape(mine["properties"][field], ours)
            if "$ref" in definition:
                ref = definition["$ref"].rsplit("/", 1)[-1]
                assert mine["properties"][field]["$ref"].endswith(f"/{ref}"), (name, field)
                continue
            assert actual == expected, (name, field, actual, expected)


async def test_export_operation_matches_the_contract(client: httpx.AsyncClient) -> None:
    ours = (await client.get("/openapi.json")).json()
    contract = spec()
    mine = ours["paths"][EXPORT_PATH]["get"]
    theirs = contract["paths"][EXPORT_PATH]["get"]
    assert mine["summary"] == theirs["summary"]
    assert mine["security"] == theirs["security"]
    assert ours["components"]["securitySchemes"] == contract["components"]["securitySchemes"]
    assert [(p["name"], p["in"], p["required"]) for p in mine["parameters"]] == [
        (p["name"], p["in"], p["required"]) for p in theirs["parameters"]
    ]
    for param in mine["parameters"]:
        assert param["schema"]["type"] == "string"
        assert param["schema"]["format"] == "uuid"
    assert set(mine["responses"]) - set(theirs["responses"]) == INTENDED_ADDITIONS
    assert set(theirs["responses"]) <= set(mine["responses"])
    for status in ("404", "409", "503", *INTENDED_ADDITIONS):
        schema = mine["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ApiErrorResponse")
    ok = _resolve(mine["responses"]["200"]["content"]["application/json"]["schema"], ours)
    assert sorted(ok["required"]) == ["data", "meta"]
    assert ok["properties"]["data"]["$ref"].endswith("/IntentAudienceExportWithUrl")
    assert ok["properties"]["meta"]["$ref"].endswith("/ApiMeta")


async def test_operations_have_clean_ids_for_generated_clients(client: httpx.AsyncClient) -> None:
    ours = (await client.get("/openapi.json")).json()
    ids = {path: op["operationId"] for path, item in ours["paths"].items() for op in item.values()}
    assert ids == {EXPORT_PATH: "get_stored_export", "/livez": "livez", "/readyz": "readyz"}


async def test_the_committed_openapi_document_is_the_services(client: httpx.AsyncClient) -> None:
    committed = json.loads((ROOT / "contract" / "openapi.json").read_text())
    assert committed == (await client.get("/openapi.json")).json()


def test_the_drift_check_refuses_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text((ROOT / "contract" / "openapi.json").read_text().replace("get_stored", "x"))
    command = [str(Path(sys.executable).parent / "orbit-dev"), "openapi", "--check", str(stale)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "make openapi" in result.stderr
    stale.write_text((ROOT / "contract" / "openapi.json").read_text())
    assert subprocess.run(command, timeout=60, check=False).returncode == 0
