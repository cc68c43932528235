"""`orbit-exports audit list|prune`: what a security team asks of the audit of URLs handed out
(who downloaded our export, when, with which key), and its retention."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.log import COLUMNS
from app.cli.common import aware_datetime, in_transaction, uuid_argument
from app.core.settings import Settings
from app.db.tables import export_url_audit as audit

# The fields of a record, in the order `list` prints them: the columns the audit writes,
# but the row's own id.
FIELDS = [name for name in COLUMNS if name != "id"]
TABLE_FIELDS = ["issued_at", "actor_id", "auth_method", "export_id", "client_ip", "reused"]
# Rows deleted per statement by `prune`, so no statement holds its locks for long.
PRUNE_BATCH = 10_000


async def records(conn: AsyncConnection, args: argparse.Namespace) -> list[dict[str, Any]]:
    query = select(*(audit.c[name] for name in FIELDS)).where(audit.c.organization_id == args.org)
    if args.export is not None:
        query = query.where(audit.c.export_id == args.export)
    if args.actor is not None:
        query = query.where(audit.c.actor_id == args.actor)
    if args.since is not None:
        query = query.where(audit.c.issued_at >= args.since)
    if args.until is not None:
        query = query.where(audit.c.issued_at < args.until)
    query = query.order_by(audit.c.issued_at, audit.c.id).limit(args.limit)
    return [dict(row._mapping) for row in await conn.execute(query)]


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if value is not None and not isinstance(value, str | bool | int):
        return str(value)  # an address
    return value


def list_records(args: argparse.Namespace, settings: Settings) -> int:
    rows = in_transaction(settings, lambda conn: records(conn, args))
    if args.format == "json":
        for row in rows:
            print(json.dumps({name: _text(row[name]) for name in FIELDS}))  # noqa: T201
        return 0
    widths = {
        name: max([len(name)] + [len(str(_text(r[name]))) for r in rows]) for name in TABLE_FIELDS
    }
    print("  ".join(name.ljust(widths[name]) for name in TABLE_FIELDS))  # noqa: T201
    for row in rows:
        print("  ".join(str(_text(row[n])).ljust(widths[n]) for n in TABLE_FIELDS))  # noqa: T201
    print(f"{len(rows)} records", file=sys.stderr)  # noqa: T201
    return 0


async def prune_older_than(conn: AsyncConnection, days: int) -> int:
    cutoff = func.now() - timedelta(days=days)
    removed = 0
    while True:
        oldest = select(audit.c.id).where(audit.c.issued_at < cutoff).limit(PRUNE_BATCH)
        result = await conn.execute(delete(audit).where(audit.c.id.in_(oldest.scalar_subquery())))
        removed += result.rowcount
        if result.rowcount < PRUNE_BATCH:
            return removed


def prune(args: argparse.Namespace, settings: Settings) -> int:
    days = args.older_than if args.older_than is not None else settings.audit_retention_days
    removed = in_transaction(settings, lambda conn: prune_older_than(conn, days))
    print(f"removed {removed} audit records older than {days} days")  # noqa: T201
    return 0


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return number


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit_parser = sub.add_parser("audit", help="the audit of download URLs handed out")
    actions = audit_parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list", help="an organization's records, oldest first (never a URL, token or key)"
    )
    listing.add_argument("--org", type=uuid_argument, required=True, help="the organization")
    listing.add_argument("--export", type=uuid_argument, help="only this export")
    listing.add_argument("--actor", help="only this API key id or dashboard user (JWT sub)")
    listing.add_argument("--since", type=aware_datetime, help="from this ISO 8601 time on")
    listing.add_argument("--until", type=aware_datetime, help="before this ISO 8601 time")
    listing.add_argument(
        "--limit", type=_positive, default=1000, help="at most this many (default 1000)"
    )
    listing.add_argument(
        "--format",
        choices=["json", "table"],
        default="table",
        help="json: one object per line, every field; table: for people (default)",
    )
    listing.set_defaults(handler=list_records)
    pruning = actions.add_parser("prune", help="delete records older than the retention")
    pruning.add_argument(
        "--older-than",
        type=_positive,
        metavar="DAYS",
        help="days to keep (default: AUDIT_RETENTION_DAYS, 90)",
    )
    pruning.set_defaults(handler=prune)
