"""Bucket CORS rules, applied to downloads as B2 applies them: preflights matched against the
rules, `Access-Control-Allow-Origin` and the rule's exposed headers on matching requests,
nothing for other origins."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from orbit_dev.b2_emulator.state import B2Failure, b2_error

DOWNLOAD_OPERATIONS = {"b2_download_file_by_name", "s3_get", "s3_head"}


def dashboard_cors_rule(origins: list[str]) -> dict[str, Any]:
    """The rule docs/operations.md recommends for a bucket the dashboard downloads from."""
    return {
        "corsRuleName": "dashboard-downloads",
        "allowedOrigins": origins,
        "allowedOperations": ["b2_download_file_by_name"],
        "allowedHeaders": [],
        "exposeHeaders": ["content-disposition"],
        "maxAgeSeconds": 3600,
    }


def _matching_rule(bucket: dict[str, Any] | None, origin: str) -> dict[str, Any] | None:
    rules: list[dict[str, Any]] = (bucket or {}).get("corsRules", [])
    for rule in rules:
        origins = rule.get("allowedOrigins", [])
        if ("*" in origins or origin in origins) and DOWNLOAD_OPERATIONS & set(
            rule.get("allowedOperations", [])
        ):
            return rule
    return None


def _allow_origin(rule: dict[str, Any], origin: str) -> str:
    return "*" if "*" in rule.get("allowedOrigins", []) else origin


def cors_preflight(bucket: dict[str, Any] | None, request: Request) -> Response:
    """B2 answers a matching preflight with the allowed method and headers, anything else with
    403 and no CORS headers, so the browser blocks the download."""
    origin = request.headers.get("origin", "")
    method = request.headers.get("access-control-request-method", "")
    asked = [
        h.strip().lower()
        for h in request.headers.get("access-control-request-headers", "").split(",")
        if h.strip()
    ]
    rule = _matching_rule(bucket, origin)
    allowed = {h.lower() for h in (rule or {}).get("allowedHeaders", [])}
    if (
        rule is None
        or method not in ("GET", "HEAD")
        or not ("*" in allowed or set(asked) <= allowed)
    ):
        return b2_error(B2Failure(403, "cors_forbidden", "CORS preflight does not match a rule."))
    headers = {
        "Access-Control-Allow-Origin": _allow_origin(rule, origin),
        "Access-Control-Allow-Methods": "GET, HEAD",
        "Access-Control-Max-Age": str(rule.get("maxAgeSeconds", 0)),
        "Vary": "Origin",
    }
    if asked:
        headers["Access-Control-Allow-Headers"] = ", ".join(asked)
    return Response(status_code=200, headers=headers)


def with_cors(response: Response, bucket: dict[str, Any] | None, request: Request) -> Response:
    origin = request.headers.get("origin")
    rule = _matching_rule(bucket, origin) if origin else None
    if rule is not None and origin is not None:
        response.headers["Access-Control-Allow-Origin"] = _allow_origin(rule, origin)
        if rule.get("exposeHeaders"):
            response.headers["Access-Control-Expose-Headers"] = ", ".join(rule["exposeHeaders"])
        response.headers["Vary"] = "Origin"
    return response
