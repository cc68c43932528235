"""Downloads by file name, with B2's download-token rules: a token works only in its bucket,
for names starting with its prefix, until it expires, and only with the exact
`b2ContentDisposition` it was minted with."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from orbit_dev.b2_emulator.cors import cors_preflight, with_cors
from orbit_dev.b2_emulator.state import B2Failure, b2_error, emulator_state

router = APIRouter()


@router.options("/file/{bucket_name}/{file_name:path}")
async def download_preflight(bucket_name: str, file_name: str, request: Request) -> Response:
    return cors_preflight(emulator_state(request).buckets.get(bucket_name), request)


@router.get("/file/{bucket_name}/{file_name:path}")
async def download_file_by_name(bucket_name: str, file_name: str, request: Request) -> Response:
    bucket = emulator_state(request).buckets.get(bucket_name)
    try:
        response = _download(bucket, file_name, request)
    except B2Failure as exc:
        response = b2_error(exc)
    return with_cors(response, bucket, request)


def _download(bucket: dict[str, Any] | None, file_name: str, request: Request) -> Response:
    state = emulator_state(request)
    token = request.query_params.get("Authorization") or request.headers.get("Authorization", "")
    disposition = request.query_params.get("b2ContentDisposition")
    grant = state.download_grants.get(token)
    if token in state.account_tokens:
        if state.account_tokens[token] <= state.now():
            raise B2Failure(401, "expired_auth_token", "Authorization token has expired.")
    elif grant is None:
        raise B2Failure(401, "bad_auth_token", "Invalid authorization token.")
    elif grant.expires_at <= state.now():
        raise B2Failure(401, "expired_auth_token", "Authorization token has expired.")
    elif grant.key_id and not state.key_alive(grant.key_id):
        raise B2Failure(401, "bad_auth_token", "The key that authorized this was deleted.")
    elif bucket is None or grant.bucket_id != bucket["bucketId"]:
        raise B2Failure(401, "unauthorized", "Token is not valid for this bucket.")
    elif not file_name.startswith(grant.prefix):
        raise B2Failure(401, "unauthorized", "Token is not valid for this file name.")
    elif disposition != grant.disposition:
        raise B2Failure(
            401, "unauthorized", "b2ContentDisposition does not match the authorization."
        )
    if bucket is None:
        raise B2Failure(404, "not_found", "Bucket does not exist.")
    stored = state.files.get((bucket["bucketId"], file_name))
    if stored is None:
        raise B2Failure(404, "not_found", "File not present.")
    headers = {
        # B2 sends the name percent-encoded (UTF-8): headers are Latin-1.
        "X-Bz-File-Name": quote(stored.name, safe="/"),
        "X-Bz-File-Id": stored.file_id,
        "X-Bz-Content-Sha1": stored.sha1,
        "X-Bz-Upload-Timestamp": str(stored.uploaded_ms),
    }
    if disposition:
        headers["Content-Disposition"] = disposition
    return Response(stored.data, media_type=stored.content_type, headers=headers)
