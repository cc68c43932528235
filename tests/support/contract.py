"""Validates response bodies against the binding contract.

The contract is `contract/get-stored-export.openapi.yaml`, the Orbit API's published contract
for this endpoint, carried in the repository.

Statuses the contract lists are checked against their own schema; every other status the
service sends (401, 405, 422, 500, ...) must still be the contract's `ApiErrorResponse`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:orbit:get-stored-export"
EXPORT_PATH = "/v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}"


CONTRACT = Path(__file__).resolve().parents[2] / "contract" / "get-stored-export.openapi.yaml"


@cache
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONTRACT.read_text())
    return loaded


@cache
def _validator(pointer: str) -> Draft202012Validator:
    resource = Resource.from_contents(spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def validator_for(status: int) -> Draft202012Validator:
    responses = spec()["paths"][EXPORT_PATH]["get"]["responses"]
    if str(status) in responses:
        pointer = "/".join(
            [
                "",
                "paths",
                _escape(EXPORT_PATH),
                "get",
                "responses",
                str(status),
                "content",
                "application~1json",
                "schema",
            ]
        )
        return _validator(pointer)
    return _validator("/components/schemas/ApiErrorResponse")


def _is_export_route(response: httpx.Response) -> bool:
    parts = response.request.url.path.split("/")
    return len(parts) == 9 and parts[1:4] == ["v1", "intent", "audiences"] and parts[5] == "runs"


DOCUMENTATION_PATHS = {"/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"}


def assert_matches_contract(response: httpx.Response) -> None:
    if response.status_code == 200 and response.request.url.path in DOCUMENTATION_PATHS:
        return  # the API's description, not an API response
    if response.status_code == 200 and response.request.url.path == "/metrics":
        assert response.headers["X-Request-ID"]
        return  # Prometheus text for scrapers, not an API response
    if response.status_code == 204:  # CORS preflight: headers only
        assert not response.content
        assert response.headers["X-Request-ID"]
        return
    body = response.json()
    if response.status_code < 400 and not _is_export_route(response):
        # Other routes (probes) still carry the contract's `meta`.
        validator = _validator("/components/schemas/ApiMeta")
        assert not list(validator.iter_errors(body["meta"]))
    else:
        errors = sorted(validator_for(response.status_code).iter_errors(body), key=str)
        assert not errors, f"{response.status_code} body breaks the contract: {errors[0]}"
    if response.status_code >= 400:
        assert set(body) == {"error", "meta"}
        assert set(body["error"]) == {"code", "message", "details"}
    assert response.headers["X-Request-ID"] == body["meta"]["request_id"]
    assert body["meta"]["timestamp"].endswith("Z")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# Download tokens seen in responses, so the suite can check none of them reached a log.
SEEN_DOWNLOAD_TOKENS: set[str] = set()


def _remember_download_token(response: httpx.Response) -> None:
    if response.status_code == 200 and _is_export_route(response):
        url = response.json()["data"]["downloadUrl"]
        SEEN_DOWNLOAD_TOKENS.update(parse_qs(urlsplit(url).query).get("Authorization", []))


async def validate_response_hook(response: httpx.Response) -> None:
    """httpx event hook: every response any test receives from the service is checked."""
    await response.aread()
    assert_matches_contract(response)
    _remember_download_token(response)
