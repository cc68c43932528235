"""A small Backblaze B2 native-API emulator. DEVELOPMENT AND TESTS ONLY: it keeps files in
memory and has a single account.

b2sdk talks to it over real HTTP (`B2_REALM=http://127.0.0.1:PORT`). It implements what this
service and its tooling use: account authorization, bucket listing and creation, upload,
download by name, and `b2_get_download_authorization`, with B2's download-token rules: a token
works only in its bucket, for names starting with its prefix, until it expires, and only with
the exact `b2ContentDisposition` it was minted with. Buckets carry B2 CORS rules (set with
`b2_update_bucket`, or `--cors-origin` on the command line), and downloads answer browsers as
B2 does: preflights matched against the rules, `Access-Control-Allow-Origin` and the rule's
exposed headers on matching requests, nothing for other origins.

Admin endpoints under `/_emulator/` let tests read the request log, move the emulator's clock
forward (to expire tokens without sleeping), expire every account token, and inject faults into
the B2 API (`POST /_emulator/faults {"status": 503, "delaySeconds": 5, "malformed": true,
"apis": ["b2_get_download_authorization"], "count": 3}`, `DELETE` to clear).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

ACCOUNT_TOKEN_SECONDS = 24 * 3600
MAX_DOWNLOAD_TOKEN_SECONDS = 604_800
ALL_CAPABILITIES = [
    "listBuckets",
    "listAllBucketNames",
    "readBuckets",
    "writeBuckets",
    "listFiles",
    "readFiles",
    "shareFiles",
    "writeFiles",
    "deleteFiles",
]


class B2Failure(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class StoredFile:
    file_id: str
    bucket_id: str
    name: str
    data: bytes
    content_type: str
    sha1: str
    uploaded_ms: int
    info: dict[str, str]


@dataclass
class DownloadGrant:
    bucket_id: str
    prefix: str
    expires_at: float
    disposition: str | None


@dataclass
class Faults:
    """Misbehaviour injected into `/b2api/` calls (the admin endpoint sets it)."""

    status: int | None = None
    delay_seconds: float = 0.0
    malformed: bool = False
    apis: list[str] | None = None
    remaining: int | None = None

    def applies(self, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if not (self.status or self.delay_seconds or self.malformed):
            return False
        return self.apis is None or path.rsplit("/", 1)[-1] in self.apis


@dataclass
class EmulatorState:
    key_id: str
    key: str
    account_id: str = "emulator-account"
    clock_offset: float = 0.0
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[tuple[str, str], StoredFile] = field(default_factory=dict)
    account_tokens: dict[str, float] = field(default_factory=dict)
    upload_tokens: dict[str, str] = field(default_factory=dict)
    download_grants: dict[str, DownloadGrant] = field(default_factory=dict)
    request_log: list[dict[str, Any]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def create_bucket(
        self,
        name: str,
        bucket_type: str = "allPrivate",
        cors_rules: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if name in self.buckets:
            raise B2Failure(400, "duplicate_bucket_name", "Bucket name is already in use.")
        bucket = {
            "accountId": self.account_id,
            "bucketId": uuid.uuid4().hex[:24],
            "bucketName": name,
            "bucketType": bucket_type,
            "bucketInfo": {},
            "corsRules": cors_rules or [],
            "lifecycleRules": [],
            "options": [],
            "revision": 1,
            "defaultServerSideEncryption": {
                "isClientAuthorizedToRead": True,
                "value": {"mode": None},
            },
            "fileLockConfiguration": {
                "isClientAuthorizedToRead": True,
                "value": {
                    "defaultRetention": {"mode": None, "period": None},
                    "isFileLockEnabled": False,
                },
            },
            "replicationConfiguration": None,
        }
        self.buckets[name] = bucket
        return bucket

    def bucket_by_id(self, bucket_id: object) -> dict[str, Any]:
        for bucket in self.buckets.values():
            if bucket["bucketId"] == bucket_id:
                return bucket
        raise B2Failure(400, "bad_request", "Invalid bucketId.")

    def check_account_token(self, request: Request) -> None:
        token = request.headers.get("Authorization", "")
        expires = self.account_tokens.get(token)
        if expires is None:
            raise B2Failure(401, "bad_auth_token", "Invalid authorization token.")
        if expires <= self.now():
            raise B2Failure(401, "expired_auth_token", "Authorization token has expired.")


DOWNLOAD_OPERATIONS = {"b2_download_file_by_name", "s3_get", "s3_head"}


def dashboard_cors_rule(origins: list[str]) -> dict[str, Any]:
    """The rule the README recommends for a bucket the dashboard downloads from."""
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


def _cors_preflight(bucket: dict[str, Any] | None, request: Request) -> Response:
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
        return _b2_error(B2Failure(403, "cors_forbidden", "CORS preflight does not match a rule."))
    headers = {
        "Access-Control-Allow-Origin": _allow_origin(rule, origin),
        "Access-Control-Allow-Methods": "GET, HEAD",
        "Access-Control-Max-Age": str(rule.get("maxAgeSeconds", 0)),
        "Vary": "Origin",
    }
    if asked:
        headers["Access-Control-Allow-Headers"] = ", ".join(asked)
    return Response(status_code=200, headers=headers)


def _with_cors(response: Response, bucket: dict[str, Any] | None, request: Request) -> Response:
    origin = request.headers.get("origin")
    rule = _matching_rule(bucket, origin) if origin else None
    if rule is not None and origin is not None:
        response.headers["Access-Control-Allow-Origin"] = _allow_origin(rule, origin)
        if rule.get("exposeHeaders"):
            response.headers["Access-Control-Expose-Headers"] = ", ".join(rule["exposeHeaders"])
        response.headers["Vary"] = "Origin"
    return response


def _b2_error(exc: B2Failure) -> JSONResponse:
    return JSONResponse(
        {"status": exc.status, "code": exc.code, "message": exc.message}, status_code=exc.status
    )


def create_emulator(
    key_id: str,
    key: str,
    buckets: list[str] | None = None,
    public_url: str | None = None,
    cors_origins: list[str] | None = None,
) -> FastAPI:
    """`public_url` is the download base handed to clients, when they reach the emulator at
    another address than the API does (compose: `http://localhost:9000` vs `http://b2:9000`).
    `cors_origins` gives the buckets the README's download rule for those browser origins."""
    state = EmulatorState(key_id=key_id, key=key)
    rules = [dashboard_cors_rule(cors_origins)] if cors_origins else []
    for name in buckets or []:
        state.create_bucket(name, cors_rules=rules)
    app = FastAPI(title="B2 emulator (development only)", openapi_url=None, docs_url=None)
    app.state.emulator = state

    @app.exception_handler(B2Failure)
    async def _on_failure(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, B2Failure)
        return _b2_error(exc)

    @app.middleware("http")
    async def _log(request: Request, call_next: Any) -> Response:
        if not request.url.path.startswith("/_emulator/"):
            state.request_log.append(
                {"method": request.method, "path": request.url.path, "at": state.now()}
            )
        faults = state.faults
        if request.url.path.startswith("/b2api/") and faults.applies(request.url.path):
            if faults.remaining is not None:
                faults.remaining -= 1
            if faults.delay_seconds:
                await asyncio.sleep(faults.delay_seconds)
            if faults.malformed:
                return Response(b'{"accountId": "trunc', media_type="application/json")
            if faults.status:
                return _b2_error(B2Failure(faults.status, "injected_fault", "Injected fault."))
        response: Response = await call_next(request)
        return response

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        return body if isinstance(body, dict) else {}

    @app.api_route("/b2api/{version}/b2_authorize_account", methods=["GET", "POST"])
    async def authorize_account(request: Request) -> Response:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            key_id, _, key = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            key_id = key = ""
        if scheme != "Basic" or key_id != state.key_id or key != state.key:
            raise B2Failure(401, "unauthorized", "Invalid application key id or key.")
        token = "4_emu_" + secrets.token_urlsafe(24)
        state.account_tokens[token] = state.now() + ACCOUNT_TOKEN_SECONDS
        url = base_url(request)
        download_url = public_url.rstrip("/") if public_url else url
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

    @app.post("/b2api/{version}/b2_list_buckets")
    async def list_buckets(request: Request) -> Response:
        state.check_account_token(request)
        body = await json_body(request)
        found = [
            b
            for b in state.buckets.values()
            if body.get("bucketName") in (None, b["bucketName"])
            and body.get("bucketId") in (None, b["bucketId"])
        ]
        return JSONResponse({"buckets": found})

    @app.post("/b2api/{version}/b2_create_bucket")
    async def create_bucket(request: Request) -> Response:
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

    @app.post("/b2api/{version}/b2_update_bucket")
    async def update_bucket(request: Request) -> Response:
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

    @app.post("/b2api/{version}/b2_get_upload_url")
    async def get_upload_url(request: Request) -> Response:
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

    @app.post("/_upload/{bucket_id}")
    async def upload_file(bucket_id: str, request: Request) -> Response:
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

    @app.post("/b2api/{version}/b2_get_download_authorization")
    async def get_download_authorization(request: Request) -> Response:
        state.check_account_token(request)
        body = await json_body(request)
        bucket = state.bucket_by_id(body.get("bucketId"))
        prefix = body.get("fileNamePrefix")
        duration = body.get("validDurationInSeconds")
        if not isinstance(prefix, str):
            raise B2Failure(400, "bad_request", "fileNamePrefix is required.")
        if not isinstance(duration, int) or not 1 <= duration <= MAX_DOWNLOAD_TOKEN_SECONDS:
            raise B2Failure(400, "bad_request", "validDurationInSeconds out of range.")
        disposition = body.get("b2ContentDisposition")
        token = "3_emu_" + secrets.token_urlsafe(32)
        state.download_grants[token] = DownloadGrant(
            bucket_id=bucket["bucketId"],
            prefix=prefix,
            expires_at=state.now() + duration,
            disposition=disposition if isinstance(disposition, str) else None,
        )
        return JSONResponse(
            {"bucketId": bucket["bucketId"], "fileNamePrefix": prefix, "authorizationToken": token}
        )

    @app.options("/file/{bucket_name}/{file_name:path}")
    async def download_preflight(bucket_name: str, file_name: str, request: Request) -> Response:
        return _cors_preflight(state.buckets.get(bucket_name), request)

    @app.get("/file/{bucket_name}/{file_name:path}")
    async def download_file_by_name(bucket_name: str, file_name: str, request: Request) -> Response:
        bucket = state.buckets.get(bucket_name)
        try:
            response = _download(bucket, file_name, request)
        except B2Failure as exc:
            response = _b2_error(exc)
        return _with_cors(response, bucket, request)

    def _download(bucket: dict[str, Any] | None, file_name: str, request: Request) -> Response:
        token = request.query_params.get("Authorization") or request.headers.get(
            "Authorization", ""
        )
        disposition = request.query_params.get("b2ContentDisposition")
        grant = state.download_grants.get(token)
        if token in state.account_tokens:
            if state.account_tokens[token] <= state.now():
                raise B2Failure(401, "expired_auth_token", "Authorization token has expired.")
        elif grant is None:
            raise B2Failure(401, "bad_auth_token", "Invalid authorization token.")
        elif grant.expires_at <= state.now():
            raise B2Failure(401, "expired_auth_token", "Authorization token has expired.")
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
            "X-Bz-File-Name": stored.name,
            "X-Bz-File-Id": stored.file_id,
            "X-Bz-Content-Sha1": stored.sha1,
            "X-Bz-Upload-Timestamp": str(stored.uploaded_ms),
        }
        if disposition:
            headers["Content-Disposition"] = disposition
        return Response(stored.data, media_type=stored.content_type, headers=headers)

    @app.get("/_emulator/requests")
    async def request_log() -> Response:
        return JSONResponse(state.request_log)

    @app.delete("/_emulator/requests")
    async def clear_request_log() -> Response:
        state.request_log.clear()
        return Response(status_code=204)

    @app.post("/_emulator/faults")
    async def set_faults(request: Request) -> Response:
        body = await json_body(request)
        state.faults = Faults(
            status=body.get("status"),
            delay_seconds=float(body.get("delaySeconds", 0)),
            malformed=bool(body.get("malformed", False)),
            apis=body.get("apis"),
            remaining=body.get("count"),
        )
        return Response(status_code=204)

    @app.delete("/_emulator/faults")
    async def clear_faults() -> Response:
        state.faults = Faults()
        return Response(status_code=204)

    @app.post("/_emulator/expire-account-tokens")
    async def expire_account_tokens() -> Response:
        for token in state.account_tokens:
            state.account_tokens[token] = state.now()
        return Response(status_code=204)

    @app.post("/_emulator/clock")
    async def advance_clock(request: Request) -> Response:
        body = await json_body(request)
        state.clock_offset += float(body.get("advanceSeconds", 0))
        return JSONResponse({"offsetSeconds": state.clock_offset})

    return app
