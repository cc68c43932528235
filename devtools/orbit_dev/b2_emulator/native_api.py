"""The B2 native API calls b2sdk makes for this service and its tooling: account
authorization, bucket listing, creation and update, upload, and b2_get_download_authorization."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from orbit_dev.b2_emulator.state import (
    ACCOUNT_TOKEN_SECONDS,
    ALL_CAPABILITIES,
    MAX_DOWNLOAD_TOKEN_SECONDS,
    B2Failure,
    DownloadGrant,
    StoredFile,
    base_url,
    emulator_state,
    json_body,
)

router = APIRouter()
MAX_FILE_NAME_BYTES = 1024


@router.api_route("/b2api/{version}/b2_authorize_account", methods=["GET", "POST"])
async def authorize_account(request: Request) -> Response:
    state = emulator_state(request)
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    try:
        key_id, _, key = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        key_id = key = ""
    known = state.keys().get(key_id) if key_id else None
    if scheme != "Basic" or known is None or not secrets.compare_digest(known, key):
        raise B2Failure(401, "unauthorized", "Invalid application key id or key.")
    token = "4_emu_" + secrets.token_urlsafe(24)
    state.account_tokens[token] = state.now() + ACCOUNT_TOKEN_SECONDS
    state.token_keys[token] = key_id
    url = base_url(request)
    download_url = state.public_url.rstrip("/") if state.public_url else url
    allowed = {"buckets": None, "capabilities": ALL_CAPABILITIES, "namePrefix": None}
    return JSONResponse(
        {
            "accountId": state.account_id,
            "authorizationToken": token,
            "applicationKeyExpirationTimestamp": None,
            "apiInfo": {
                "groupsApi": {},
                "storageApi": {
                    "apiUrl": url,
                    "downloadUrl": download_url,
                    "s3ApiUrl": url,
                    "recommendedPartSize": 100_000_000,
                    "absoluteMinimumPartSize": 5_000_000,
                    "allowed": allowed,
                    # The pre-v3 shape, which b2sdk's v2 interface still reads.
                    "bucketId": None,
                    "bucketName": None,
                    "capabilities": ALL_CAPABILITIES,
                    "namePrefix": None,
                },
            },
        }
    )


@router.post("/b2api/{version}/b2_list_buckets")
async def list_buckets(request: Request) -> Response:
    state = emulator_state(request)
    state.check_account_token(request)
    body = await json_body(request)
    found = [
        b
        for b in state.buckets.values()
        if body.get("bucketName") in (None, b["bucketName"])
        and body.get("bucketId") in (None, b["bucketId"])
    ]
    return JSONResponse({"buckets": found})


@router.post("/b2api/{version}/b2_create_bucket")
async def create_bucket(request: Request) -> Response:
    state = emulator_state(request)
    state.check_account_token(request)
    body = await json_body(request)
    name = body.get("bucketName")
    if not isinstance(name, str) or not name:
        raise B2Failure(400, "bad_request", "bucketName is required.")
    rules = body.get("corsRules")
    bucket = state.create_bucket(
        name,
        str(body.get("bucketType", "allPrivate")),
        cors_rules=rules if isinstance(rules, list) else None,
    )
    return JSONResponse(bucket)


@router.post("/b2api/{version}/b2_update_bucket")
async def update_bucket(request: Request) -> Response:
    state = emulator_state(request)
    state.check_account_token(request)
    body = await json_body(request)
    bucket = state.bucket_by_id(body.get("bucketId"))
    if_revision = body.get("ifRevisionIs")
    if if_revision is not None and if_revision != bucket["revision"]:
        raise B2Failure(409, "conflict", "ifRevisionIs does not match.")
    for field_name in ("bucketType", "bucketInfo", "corsRules", "lifecycleRules"):
        if field_name in body:
            bucket[field_name] = body[field_name]
    bucket["revision"] += 1
    return JSONResponse(bucket)


@router.post("/b2api/{version}/b2_get_upload_url")
async def get_upload_url(request: Request) -> Response:
    state = emulator_state(request)
    state.check_account_token(request)
    bucket = state.bucket_by_id((await json_body(request)).get("bucketId"))
    token = "upload_" + secrets.token_urlsafe(16)
    state.upload_tokens[token] = bucket["bucketId"]
    return JSONResponse(
        {
            "bucketId": bucket["bucketId"],
            "uploadUrl": f"{base_url(request)}/_upload/{bucket['bucketId']}",
            "authorizationToken": token,
        }
    )


@router.post("/_upload/{bucket_id}")
async def upload_file(bucket_id: str, request: Request) -> Response:
    state = emulator_state(request)
    if state.upload_tokens.get(request.headers.get("Authorization", "")) != bucket_id:
        raise B2Failure(401, "bad_auth_token", "Invalid upload authorization token.")
    data = await request.body()
    name = unquote(request.headers.get("X-Bz-File-Name", ""))
    if not name:
        raise B2Failure(400, "bad_request", "X-Bz-File-Name is required.")
    sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    claimed = request.headers.get("X-Bz-Content-Sha1", "")
    if claimed not in ("do_not_verify", sha1) and not claimed.startswith("unverified:"):
        raise B2Failure(400, "bad_request", "Sha1 did not match data received.")
    info = {
        k[len("x-bz-info-") :]: unquote(v)
        for k, v in request.headers.items()
        if k.lower().startswith("x-bz-info-")
    }
    stored = StoredFile(
        file_id="4_z" + uuid.uuid4().hex,
        bucket_id=bucket_id,
        name=name,
        data=data,
        content_type=request.headers.get("Content-Type", "application/octet-stream"),
        sha1=sha1,
        uploaded_ms=int(state.now() * 1000),
        info=info,
    )
    state.files[(bucket_id, name)] = stored
    return JSONResponse(
        {
            "accountId": state.account_id,
            "action": "upload",
            "bucketId": bucket_id,
            "contentLength": len(data),
            "contentSha1": sha1,
            "contentType": stored.content_type,
            "fileId": stored.file_id,
            "fileInfo": info,
            "fileName": name,
            "uploadTimestamp": stored.uploaded_ms,
            "serverSideEncryption": {"mode": None},
            "legalHold": {"isClientAuthorizedToRead": True, "value": None},
            "fileRetention": {"isClientAuthorizedToRead": True, "value": {"mode": None}},
            "replicationStatus": None,
        }
    )


@router.post("/b2api/{version}/b2_get_download_authorization")
async def get_download_authorization(request: Request) -> Response:
    state = emulator_state(request)
    state.check_account_token(request)
    body = await json_body(request)
    bucket = state.bucket_by_id(body.get("bucketId"))
    prefix = body.get("fileNamePrefix")
    duration = body.get("validDurationInSeconds")
    if not isinstance(prefix, str):
        raise B2Failure(400, "bad_request", "fileNamePrefix is required.")
    if len(prefix.encode()) > MAX_FILE_NAME_BYTES or any(
        ord(c) < 32 or ord(c) == 127 for c in prefix
    ):
        # B2's file-name rules: UTF-8, at most 1024 bytes, no control characters.
        raise B2Failure(400, "bad_request", "Invalid fileNamePrefix.")
    if not isinstance(duration, int) or not 1 <= duration <= MAX_DOWNLOAD_TOKEN_SECONDS:
        raise B2Failure(400, "bad_request", "validDurationInSeconds out of range.")
    disposition = body.get("b2ContentDisposition")
    token = "3_emu_" + secrets.token_urlsafe(32)
    state.grant(
        token,
        DownloadGrant(
            bucket_id=bucket["bucketId"],
            prefix=prefix,
            expires_at=state.now() + duration,
            disposition=disposition if isinstance(disposition, str) else None,
            key_id=state.key_of(request),
        ),
    )
    return JSONResponse(
        {"bucketId": bucket["bucketId"], "fileNamePrefix": prefix, "authorizationToken": token}
    )
