"""`orbit-exports api-keys create|list|rotate|revoke`: organization API keys for operators."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from app.auth.api_keys import (
    KeyNotRotatable,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    rotate_api_key,
)
from app.cli.common import aware_datetime, duration_argument, in_transaction, uuid_argument
from app.core.settings import Settings


def create(args: argparse.Namespace, settings: Settings) -> int:
    key, record = in_transaction(
        settings, lambda conn: create_api_key(conn, args.org, args.name, args.expires_at)
    )
    print(  # noqa: T201
        f"created API key id={record.id} prefix={record.prefix} org={record.organization_id}"
        f" expires_at={record.expires_at.isoformat() if record.expires_at else 'never'}\n"
        "the key is shown once, on the next line; store it now:"
    )
    print(key)  # noqa: T201
    return 0


def list_keys(args: argparse.Namespace, settings: Settings) -> int:
    records = in_transaction(settings, lambda c: list_api_keys(c, args.org))
    now = datetime.now(UTC)
    for r in records:
        state = "revoked" if r.revoked_at else "active"
        if not r.revoked_at and r.expires_at is not None and r.expires_at <= now:
            state = "expired"
        expires = r.expires_at.isoformat() if r.expires_at else "never"
        print(f"{r.id}  {r.prefix}...  {state:7}  expires={expires}  name={r.name}")  # noqa: T201
    return 0


def rotate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        rotated = in_transaction(settings, lambda c: rotate_api_key(c, args.key_id, args.overlap))
    except KeyNotRotatable as exc:
        print(str(exc), file=sys.stderr)  # noqa: T201
        return 1
    if rotated is None:
        print(f"no API key with id {args.key_id}", file=sys.stderr)  # noqa: T201
        return 1
    key, new, old = rotated
    assert old.expires_at is not None
    print(  # noqa: T201
        f"rotated {old.id} ({old.prefix}...): it keeps working until"
        f" {old.expires_at.isoformat()}, then only the new key does\n"
        f"created API key id={new.id} prefix={new.prefix} org={new.organization_id}"
        f" expires_at={new.expires_at.isoformat() if new.expires_at else 'never'}\n"
        "the new key is shown once, on the next line; store it now:"
    )
    print(key)  # noqa: T201
    return 0


def revoke(args: argparse.Namespace, settings: Settings) -> int:
    record = in_transaction(settings, lambda c: revoke_api_key(c, args.key_id))
    if record is None:
        print(f"no API key with id {args.key_id}", file=sys.stderr)  # noqa: T201
        return 1
    assert record.revoked_at is not None
    print(f"revoked {record.id} ({record.prefix}...) at {record.revoked_at.isoformat()}")  # noqa: T201
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("api-keys", help="manage organization API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    new = keys_sub.add_parser("create", help="create a key (printed once, on the last line)")
    new.add_argument("--org", type=uuid_argument, required=True, help="the organization's UUID")
    new.add_argument("--name", default="default", help="a label to tell keys apart")
    new.add_argument(
        "--expires-at",
        type=aware_datetime,
        help="ISO 8601 time with a zone after which the key stops working (default: never)",
    )
    new.set_defaults(handler=create)
    listing = keys_sub.add_parser("list", help="list an organization's keys")
    listing.add_argument("--org", type=uuid_argument, required=True, help="the organization's UUID")
    listing.set_defaults(handler=list_keys)
    turn = keys_sub.add_parser(
        "rotate",
        help="a new key for the same organization and name (printed once, on the last line);"
        " the old one keeps working for the overlap, then expires",
    )
    turn.add_argument("key_id", type=uuid_argument, help="the key's id, as `list` shows it")
    turn.add_argument(
        "--overlap",
        type=duration_argument,
        default=timedelta(hours=24),
        help="how long both keys work, e.g. 24h, 90m, 2d or 1h30m (default: 24h)",
    )
    turn.set_defaults(handler=rotate)
    drop = keys_sub.add_parser("revoke", help="revoke a key by id")
    drop.add_argument("key_id", type=uuid_argument, help="the key's id, as `list` shows it")
    drop.set_defaults(handler=revoke)
