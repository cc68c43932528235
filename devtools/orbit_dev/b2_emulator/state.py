"""The emulator's in-memory world: one account, its buckets, files, tokens, and injected faults."""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

ACCOUNT_TOKEN_SECONDS = 24 * 3600
MAX_DOWNLOAD_TOKEN_SECONDS = 604_800
MAX_LOGGED_REQUESTS = 10_000
MAX_DOWNLOAD_GRANTS = 100_000
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
    # The application key whose account token asked for it: deleting the key voids it.
    key_id: str = ""


@dataclass
class Faults:
    """Misbehaviour injected into `/b2api/` calls (the admin endpoint sets it)."""

    status: int | None = None
    delay_seconds: float = 0.0
    malformed: bool = False
    apis: list[str] | None = None
    remaining: int | None = None
    # With `status`: the Retry-After header B2 sends when it throttles (429, 503).
    retry_after: int | None = None
    # Answered with 200 instead of the real answer: JSON a client must survive.
    body: Any = None

    def applies(self, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if not (self.status or self.delay_seconds or self.malformed or self.body is not None):
            return False
        return self.apis is None or path.rsplit("/", 1)[-1] in self.apis


@dataclass
class EmulatorState:
    key_id: str
    key: str
    # The download base handed to clients, when they reach the emulator at another address
    # than the API does (compose: `http://localhost:9000` vs `http://b2:9000`).
    public_url: str | None = None
    account_id: str = "emulator-account"
    clock_offset: float = 0.0
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[tuple[str, str], StoredFile] = field(default_factory=dict)
    account_tokens: dict[str, float] = field(default_factory=dict)
    # Application keys besides the first (rotation): id -> key; and which key each account
    # token was issued to.
    other_keys: dict[str, str] = field(default_factory=dict)
    token_keys: dict[str, str] = field(default_factory=dict)
    upload_tokens: dict[str, str] = field(default_factory=dict)
    download_grants: dict[str, DownloadGrant] = field(default_factory=dict)
    # Bounded: a long-running emulator (make run, compose) must not grow without end.
    request_log: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_LOGGED_REQUESTS)
    )
    faults: Faults = field(default_factory=Faults)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def keys(self) -> dict[str, str]:
        """Every application key that works now, by id (the first can be deleted too)."""
        first = {self.key_id: self.key} if self.key_id else {}
        return first | self.other_keys

    def delete_key(self, key_id: str) -> None:
        """As B2 does: the key stops authorizing, and so do its account tokens and the download
        authorizations they asked for."""
        if key_id == self.key_id:
            self.key_id = ""
        self.other_keys.pop(key_id, None)
        for token in [t for t, k in self.token_keys.items() if k == key_id]:
            self.account_tokens.pop(token, None)

    def key_of(self, request: Request) -> str:
        """The application key behind the request's (valid) account token."""
        return self.token_keys.get(request.headers.get("Authorization", ""), "")

    def key_alive(self, key_id: str) -> bool:
        return key_id in self.keys()

    def grant(self, token: str, grant: DownloadGrant) -> None:
        """Remember a download grant; past MAX_DOWNLOAD_GRANTS, expired ones go first, then
        the oldest."""
        self.download_grants[token] = grant
        if len(self.download_grants) > MAX_DOWNLOAD_GRANTS:
            now = self.now()
            for old in [t for t, g in self.download_grants.items() if g.expires_at <= now]:
                del self.download_grants[old]
            while len(self.download_grants) > MAX_DOWNLOAD_GRANTS:
                del self.download_grants[next(iter(self.download_grants))]

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


def b2_error(exc: B2Failure, retry_after: int | None = None) -> JSONResponse:
    return JSONResponse(
        {"status": exc.status, "code": exc.code, "message": exc.message},
        status_code=exc.status,
        headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
    )


def emulator_state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")
