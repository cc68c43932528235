"""Organization API keys: minting, hashing, lookup, listing, revocation.

A key is `sk_` + 43 URL-safe characters (32 random bytes). Only its SHA-256 is stored, with
the first characters in clear (`prefix`) so a person can tell keys apart in a listing.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import RowMapping, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import Database
from app.tables import api_keys
from app.ttl_cache import TtlCache

KEY_PREFIX = "sk_"
_VISIBLE_CHARS = 8
_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKeyOwner:
    key_id: uuid.UUID
    organization_id: uuid.UUID
    prefix: str
    expires_at: datetime | None = None


class ApiKeyCache:
    """Recently verified keys, by hash, so a steady stream of requests costs one database round
    trip each (the export lookup) instead of two. An entry lives `ttl` seconds at most and never
    past the key's own expiry, so a revoked key stops working within `ttl` seconds. Only hits
    are cached: unknown keys always reach the database."""

    def __init__(self, ttl: float, max_size: int = 10_000) -> None:
        self._ttl = ttl
        self._entries: TtlCache[str, ApiKeyOwner] = TtlCache(max_size)

    def get(self, key_hash: str) -> ApiKeyOwner | None:
        return self._entries.get(key_hash)

    def put(self, key_hash: str, owner: ApiKeyOwner, now: datetime) -> None:
        lifetime = self._ttl
        if owner.expires_at is not None:
            lifetime = min(lifetime, (owner.expires_at - now).total_seconds())
        self._entries.put(key_hash, owner, lifetime)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def visible_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + _VISIBLE_CHARS]


async def create_api_key(
    conn: AsyncConnection,
    organization_id: uuid.UUID,
    name: str,
    expires_at: datetime | None = None,
) -> tuple[str, ApiKeyRecord]:
    """Insert a new key; the clear key exists only in the return value, never in the table."""
    key = generate_key()
    row = (
        await conn.execute(
            insert(api_keys)
            .values(
                organization_id=organization_id,
                name=name,
                prefix=visible_prefix(key),
                key_hash=hash_key(key),
                expires_at=expires_at,
            )
            .returning(*api_keys.c)
        )
    ).one()
    return key, _record(row._mapping)


async def list_api_keys(conn: AsyncConnection, organization_id: uuid.UUID) -> list[ApiKeyRecord]:
    rows = await conn.execute(
        select(api_keys)
        .where(api_keys.c.organization_id == organization_id)
        .order_by(api_keys.c.created_at)
    )
    return [_record(row._mapping) for row in rows]


async def revoke_api_key(conn: AsyncConnection, key_id: uuid.UUID) -> ApiKeyRecord | None:
    """Revoke a key (idempotent: an already revoked key keeps its first revocation time)."""
    row = (
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(revoked_at=func.coalesce(api_keys.c.revoked_at, func.now()))
            .returning(*api_keys.c)
        )
    ).one_or_none()
    return None if row is None else _record(row._mapping)


_FIND_ACTIVE_KEY_SQL = (
    "SELECT id, organization_id, prefix, expires_at FROM api_keys"
    " WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
)


async def find_active_key(db: Database, key_hash: str) -> ApiKeyOwner | None:
    row = await db.fetch_row(_FIND_ACTIVE_KEY_SQL, key_hash)
    if row is None:
        return None
    return ApiKeyOwner(
        key_id=row["id"],
        organization_id=row["organization_id"],
        prefix=row["prefix"],
        expires_at=row["expires_at"],
    )


def _record(m: RowMapping) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=m["id"],
        organization_id=m["organization_id"],
        name=m["name"],
        prefix=m["prefix"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
    )
