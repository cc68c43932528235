"""The audit of every download URL handed out, written off the request path.

The route hands each record to `AuditLog.record`, which only appends it to a bounded queue (no
I/O, no await). A background task writes the queue in batches: one statement per batch (an
INSERT of unnested arrays, which PgBouncer in transaction mode passes like any other), at most
every AUDIT_FLUSH_SECONDS or as soon as 1,000 records wait. Nothing is lost silently:
- while Postgres is unreachable the batch stays at the head of the queue and is tried again
  with backoff (the records' own ids make a batch sent twice count once);
- at shutdown (after the server drained its requests) the queue is written out, within
  FINAL_FLUSH_SECONDS;
- records that find the queue full (AUDIT_QUEUE_MAX) are counted and logged once a minute with
  the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from app.core.errors import DatabaseUnavailable
from app.core.principal import Principal
from app.db.database import Database
from app.db.tables import export_url_audit

logger = logging.getLogger("app.audit")

BATCH_MAX = 1000
FINAL_FLUSH_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0
# A batch of 1,000 rows takes milliseconds; this bounds a stalled server, not a big batch.
WRITE_DEADLINE_SECONDS = 10.0
USER_AGENT_MAX = 512


class AuditRecord(NamedTuple):
    """One URL handed out, as the request path has it at hand: made in well under a
    microsecond, and turned into the table's columns (`COLUMNS`) by the writer, off the
    request path."""

    issued_at: float  # time.time()
    request_id: str
    principal: Principal
    export_id: uuid.UUID
    audience_id: uuid.UUID
    run_id: uuid.UUID
    signer: str
    bucket_name: str
    file_name: str
    url_expires_at: datetime
    reused: bool
    client: tuple[str, int] | None  # the ASGI scope's client (the peer, or X-Forwarded-For's)
    user_agent: str | None


# The table's columns, in the order a batch sends them.
COLUMNS = (
    "id",
    "issued_at",
    "request_id",
    "organization_id",
    "actor_id",
    "auth_method",
    "export_id",
    "audience_id",
    "run_id",
    "signer",
    "bucket_name",
    "file_name",
    "url_expires_at",
    "reused",
    "client_ip",
    "user_agent",
)


def row_of(record: AuditRecord) -> tuple[object, ...]:
    """The record as the table's row, in COLUMNS order, with an id of its own."""
    principal = record.principal
    return (
        uuid.uuid4(),
        datetime.fromtimestamp(record.issued_at, UTC),
        record.request_id,
        principal.organization_id,
        principal.actor_id,
        principal.method,
        record.export_id,
        record.audience_id,
        record.run_id,
        record.signer,
        record.bucket_name,
        record.file_name,
        record.url_expires_at,
        record.reused,
        client_ip(record.client),
        None if record.user_agent is None else record.user_agent[:USER_AGENT_MAX],
    )


def client_ip(client: tuple[str, int] | None) -> str | None:
    """The peer's address (X-Forwarded-For's, when the peer is in TRUSTED_PROXIES: uvicorn's
    ProxyHeadersMiddleware put it there), or None if that is not an address."""
    if client is None:
        return None
    try:
        return str(ipaddress.ip_address(client[0]))
    except ValueError:
        return None


def _insert_sql() -> str:
    """One statement for a whole batch: each column as an array, unnested into rows."""
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    columns = [export_url_audit.c[name] for name in COLUMNS]
    names = ", ".join(c.name for c in columns)
    arrays = ", ".join(
        f"${i}::{c.type.compile(dialect=dialect)}[]" for i, c in enumerate(columns, 1)
    )
    return (
        f"INSERT INTO {export_url_audit.name} ({names})"  # noqa: S608 - our own table definition
        # No conflict target: naming `id` would need SELECT on it, which the service's role
        # does not have; the primary key is the only constraint a row can conflict with.
        f" SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
    )


INSERT_SQL = _insert_sql()


class AuditLog:
    def __init__(
        self,
        db: Database,
        *,
        flush_seconds: float,
        queue_max: int,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._flush_seconds = flush_seconds
        self._queue_max = queue_max
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._monotonic = monotonic
        self._queue: deque[AuditRecord] = deque()
        # The batch being written, as columns, until it is: a batch sent again (after a
        # failure) carries the same ids, so the table keeps each record once.
        self._batch: tuple[int, list[tuple[object, ...]]] | None = None
        self._full = asyncio.Event()
        self._dropped_unlogged = 0
        self._dropped_logged_at = -math.inf
        self.failures = 0

    def __len__(self) -> int:
        return len(self._queue)

    def record(self, record: AuditRecord) -> None:
        """Queue `record` for the next batch; counted and dropped if the queue is full."""
        if len(self._queue) >= self._queue_max:
            self._dropped(1)
            return
        self._queue.append(record)
        if len(self._queue) >= BATCH_MAX:
            self._full.set()

    def _dropped(self, count: int) -> None:
        if self._on_dropped is not None:
            self._on_dropped(count)
        self._dropped_unlogged += count
        now = self._monotonic()
        if now - self._dropped_logged_at >= 60:
            logger.error(
                "audit queue full (AUDIT_QUEUE_MAX=%d): %d records dropped",
                self._queue_max,
                self._dropped_unlogged,
            )
            self._dropped_logged_at, self._dropped_unlogged = now, 0

    async def run(self) -> None:
        """Write batches until cancelled; a failed batch is tried again with backoff."""
        backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._flush_seconds)
            while self._queue:
                try:
                    await self._write_batch()
                except Exception as exc:  # an outage, or a grant missing: kept, tried again
                    self.failures += 1
                    unavailable = isinstance(exc, DatabaseUnavailable)
                    logger.log(
                        logging.WARNING if unavailable else logging.ERROR,
                        "audit batch not written (%s); %d records wait, again in %.0f s",
                        "database unavailable" if unavailable else type(exc).__name__,
                        len(self._queue),
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                else:
                    backoff = 1.0
                if len(self._queue) < BATCH_MAX:
                    break

    async def _write_batch(self) -> None:
        if self._batch is None:
            size = min(BATCH_MAX, len(self._queue))
            rows = [row_of(self._queue[i]) for i in range(size)]
            self._batch = size, list(zip(*rows, strict=True))
        self._full.clear()
        size, columns = self._batch
        await self._db.execute(INSERT_SQL, *columns, deadline=WRITE_DEADLINE_SECONDS)
        for _ in range(size):
            self._queue.popleft()
        self._batch = None
        if self._on_written is not None:
            self._on_written(size)

    async def close(self, within: float = FINAL_FLUSH_SECONDS) -> None:
        """Write out what is queued (shutdown), within `within` seconds; what remains is
        counted as dropped."""
        try:
            async with asyncio.timeout(within):
                while self._queue:
                    try:
                        await self._write_batch()
                    except DatabaseUnavailable:
                        await asyncio.sleep(0.2)
        except Exception as exc:  # the deadline, or a write that cannot succeed
            logger.error(
                "audit: %d records not written at shutdown (%s)",
                len(self._queue),
                type(exc).__name__,
            )
            self._dropped(len(self._queue))
            self._queue.clear()
            self._batch = None
