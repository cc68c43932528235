"""Organization API keys: minting, hashing, lookup, listing, revocation.

A key is `sk_` + 43 URL-safe characters (32 random bytes). Only its SHA-256 is stored, with
the first characters in clear (`prefix`) so a person can tell keys apart in a listing.

The request path asks an `ApiKeyResolver` who owns a key hash; the composition root picks the
implementation (`CachedApiKeys`, or `DatabaseApiKeys` when API_KEY_CACHE_SECONDS=0), so a
shared one can replace them without touching the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    ARRAY,
    RowMapping,
    Text,
    and_,
    any_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from app.auth.rate_limit import InMemoryRateLimiter
from app.core.clock import Clock, utc_now
from app.core.ttl_cache import TtlCache
from app.db.database import Database
from app.db.statements import compiled
from app.db.tables import api_keys

logger = logging.getLogger("app.api_keys")

KEY_PREFIX = "sk_"
# Every change of an api_keys row is announced here with the key's hash (migration 0002).
KEY_CHANGES_CHANNEL = "orbit_api_key_changes"
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


class ApiKeyResolver(Protocol):
    async def owner(self, key_hash: str) -> ApiKeyOwner | None:
        """The active key's owner, or None for an unknown, expired or revoked key."""

    async def run(self) -> None:
        """Background upkeep for as long as the app runs (cancelled at shutdown)."""


class DatabaseApiKeys:
    """Every lookup asks the database: a revoked key fails on its next request."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def owner(self, key_hash: str) -> ApiKeyOwner | None:
        return await find_active_key(self._db, key_hash)

    async def run(self) -> None:
        return None


class CachedApiKeys:
    """Recently verified keys, by hash, so a steady stream of requests costs one database round
    trip each (the export lookup) instead of two; and the hashes of every active key, so a
    made-up key costs no database work at all.

    Every `ttl / 2` seconds all remembered keys are checked again in one statement (`run`, a
    background task): revoked or expired ones are forgotten, the others trusted for another
    `ttl`. An entry is never trusted longer than `ttl` after the database last confirmed it, nor
    past the key's own expiry, so a revoked key stops working within `ttl` seconds (usually
    within half of it), and no request waits for a key lookup once its key is known. Checking
    keys one by one as they aged cost the API-key case about a tenth of its throughput in
    make bench.

    The known hashes (64 bits of each, as integers: about 70 bytes per key) are loaded once the
    process listens for key changes, and every change announced afterwards (a new key
    included, migration 0003) is added, so the set is complete while listening. A key whose
    hash is not in a complete set is refused without asking the database, except for a small
    budget of lookups (UNKNOWN_KEY_LOOKUPS_PER_MINUTE, burst UNKNOWN_KEY_BURST per process) for
    a key used within milliseconds of its creation, before its announcement arrived. Before
    the set is complete (starting, or the listening connection lost) every key is looked up.

    Keys the database refused (revoked, deleted, expired, or never issued) are remembered for
    `ttl` too, so replaying a leaked key that was revoked costs no more than a made-up one:
    after the first lookup, nothing until `ttl` has passed or the key changes.

    Notifications are input like any other (any database role may NOTIFY the channel): a
    payload that is not a key hash is ignored and counted, and the known set is bounded; past
    `max_known` hashes it is reloaded from the table, which holds the truth.
    """

    UNKNOWN_KEY_LOOKUPS_PER_MINUTE = 300
    UNKNOWN_KEY_BURST = 20

    def __init__(
        self,
        ttl: float,
        db: Database,
        max_size: int = 10_000,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        max_known: int = 1_000_000,
        on_ignored_notification: Callable[[], None] | None = None,
    ) -> None:
        self._ttl = ttl
        self._db = db
        self._clock = clock
        self._entries: TtlCache[str, ApiKeyOwner] = TtlCache(max_size, monotonic)
        self._refused: TtlCache[str, bool] = TtlCache(max_size, monotonic)
        self._max_known = max_known
        self._on_ignored = on_ignored_notification
        self._ignored_warned_at = -math.inf
        self._monotonic = monotonic
        self._known: set[int] = set()
        self._known_complete = False
        # Hashes announced while the set is being loaded (the load may not see them).
        self._announced_during_load: set[int] | None = None
        # Bumped whenever listening starts or stops: a load begun before is not trusted.
        self._generation = 0
        self._reload = asyncio.Event()
        self.loaded = asyncio.Event()
        self._unknown_budget = InMemoryRateLimiter(
            self.UNKNOWN_KEY_LOOKUPS_PER_MINUTE, self.UNKNOWN_KEY_BURST, monotonic
        )

    async def owner(self, key_hash: str) -> ApiKeyOwner | None:
        owner = self._entries.get(key_hash)
        if owner is not None:
            return owner
        if self._refused.get(key_hash):
            return None
        if (
            self._known_complete
            and _short(key_hash) not in self._known
            and self._unknown_budget.take("unknown") is not None
        ):
            return None
        owner = await find_active_key(self._db, key_hash)
        if owner is None:
            self._refused.put(key_hash, True, self._ttl)
        else:
            self._remember(key_hash, owner)
        return owner

    def _remember(self, key_hash: str, owner: ApiKeyOwner) -> None:
        lifetime = self._ttl
        if owner.expires_at is not None:
            lifetime = min(lifetime, (owner.expires_at - self._clock()).total_seconds())
        self._entries.put(key_hash, owner, lifetime)

    def forget(self, key_hash: str) -> None:
        """The key changed or was created (a notification): the next request with it asks the
        database. Anything but a key hash is ignored."""
        if not _KEY_HASH.fullmatch(key_hash):
            self._ignored_notification()
            return
        self._entries.discard(key_hash)
        self._refused.discard(key_hash)
        short = _short(key_hash)
        self._known.add(short)
        if self._announced_during_load is not None:
            self._announced_during_load.add(short)
        if len(self._known) > self._max_known:
            # More than the bound (a flood on the channel): start over from the table.
            self._known = set()
            self.stopped_listening()
            self._reload.set()

    def _ignored_notification(self) -> None:
        if self._on_ignored is not None:
            self._on_ignored()
        now = self._monotonic()
        if now - self._ignored_warned_at >= 60:
            self._ignored_warned_at = now
            logger.warning(
                "ignored notifications on %s that are not key hashes", KEY_CHANGES_CHANNEL
            )

    def forget_all(self) -> None:
        """Listening (re)started: changes may have been missed meanwhile. Start over, and load
        the known hashes again."""
        self._entries.clear()
        self._refused.clear()
        self.stopped_listening()
        self._reload.set()

    def stopped_listening(self) -> None:
        """Announcements may be missed from now on: the known hashes are no longer complete."""
        self._generation += 1
        self._known_complete = False

    async def load_known(self) -> None:
        generation = self._generation
        self._announced_during_load = set()
        try:
            known: set[int] = set()
            after = ""
            while True:
                rows = await self._db.fetch_all(ACTIVE_HASHES_SQL, after, _HASHES_PER_PAGE)
                known.update(_short(row[0]) for row in rows)
                if len(rows) < _HASHES_PER_PAGE:
                    break
                after = rows[-1][0]
            if generation == self._generation and len(known) <= self._max_known:
                self._known = known | self._announced_during_load
                self._known_complete = True
                self.loaded.set()
        finally:
            self._announced_during_load = None

    async def recheck(self) -> None:
        hashes = self._entries.keys()
        if not hashes:
            return
        active = await find_active_keys(self._db, hashes)
        for key_hash in hashes:
            owner = active.get(key_hash)
            if owner is None:
                self._entries.discard(key_hash)
            else:
                self._remember(key_hash, owner)

    async def run(self) -> None:
        backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), self._ttl / 2)
            if self._reload.is_set():
                self._reload.clear()
                try:
                    await self.load_known()
                except Exception as exc:  # every key is looked up meanwhile; tried again
                    logger.warning(
                        "loading the known API keys failed (%s); again in %.0f s",
                        type(exc).__name__,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
                    self._reload.set()
                else:
                    backoff = 1.0
            try:
                await self.recheck()
            except Exception as exc:  # entries then run out at their ttl; requests ask again
                logger.warning("API key recheck failed: %s", type(exc).__name__)


_KEY_HASH = re.compile(r"[0-9a-f]{64}")


def _short(key_hash: str) -> int:
    """64 bits of the hash: a set of these is a third of the size of one of hex strings, and a
    collision only costs a database lookup."""
    return int(key_hash[:16], 16)


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


class KeyNotRotatable(Exception):
    """The key to rotate is revoked or expired already: there is nothing to overlap with."""


async def rotate_api_key(
    conn: AsyncConnection, key_id: uuid.UUID, overlap: timedelta
) -> tuple[str, ApiKeyRecord, ApiKeyRecord] | None:
    """A new key for the same organization and name (with the old key's expiry, if it had
    one), and the old key set to expire when `overlap` ends (or earlier, if it already would):
    both work meanwhile. None when there is no such key; KeyNotRotatable when it is revoked or
    expired."""
    row = (
        await conn.execute(select(api_keys).where(api_keys.c.id == key_id).with_for_update())
    ).one_or_none()
    if row is None:
        return None
    old = _record(row._mapping)
    now = (await conn.execute(select(func.now()))).scalar_one()
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        raise KeyNotRotatable(f"API key {key_id} is revoked or expired: create a new one instead")
    key, new = await create_api_key(conn, old.organization_id, old.name, old.expires_at)
    ends = now + overlap
    retired = (
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(expires_at=func.least(func.coalesce(api_keys.c.expires_at, ends), ends))
            .returning(*api_keys.c)
        )
    ).one()
    return key, new, _record(retired._mapping)


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


_ACTIVE = and_(
    api_keys.c.revoked_at.is_(None),
    or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > func.now()),
)
_OWNER_COLUMNS = (
    api_keys.c.key_hash,
    api_keys.c.id,
    api_keys.c.organization_id,
    api_keys.c.prefix,
    api_keys.c.expires_at,
)
FIND_ACTIVE_KEY_SQL = compiled(
    select(*_OWNER_COLUMNS).where(api_keys.c.key_hash == bindparam("key_hash"), _ACTIVE),
    "key_hash",
)
FIND_ACTIVE_KEYS_SQL = compiled(
    select(*_OWNER_COLUMNS).where(
        api_keys.c.key_hash == any_(bindparam("key_hashes", type_=ARRAY(Text))), _ACTIVE
    ),
    "key_hashes",
)
# In pages along the key_hash index: each statement stays short, however many keys there are.
ACTIVE_HASHES_SQL = compiled(
    select(api_keys.c.key_hash)
    .where(api_keys.c.key_hash > bindparam("after"), _ACTIVE)
    .order_by(api_keys.c.key_hash)
    .limit(bindparam("page_size")),
    "after",
    "page_size",
)
_HASHES_PER_PAGE = 10_000


def _owner(row: Any) -> ApiKeyOwner:
    return ApiKeyOwner(
        key_id=row["id"],
        organization_id=row["organization_id"],
        prefix=row["prefix"],
        expires_at=row["expires_at"],
    )


async def find_active_key(db: Database, key_hash: str) -> ApiKeyOwner | None:
    row = await db.fetch_row(FIND_ACTIVE_KEY_SQL, key_hash)
    return None if row is None else _owner(row)


async def find_active_keys(db: Database, key_hashes: list[str]) -> dict[str, ApiKeyOwner]:
    rows = await db.fetch_all(FIND_ACTIVE_KEYS_SQL, key_hashes)
    return {row["key_hash"]: _owner(row) for row in rows}


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
