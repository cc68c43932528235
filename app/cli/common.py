"""What every command shares: argument types, progress lines, and a ready database URL."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.logs import configure_logging
from app.core.settings import (
    ConfigurationError,
    Settings,
    describe_invalid_settings,
    get_settings,
    report_configuration_error,
)

T = TypeVar("T")


def aware_datetime(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-12-31T00:00:00Z")
    return parsed.astimezone(UTC)


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def duration_argument(value: str) -> timedelta:
    """`24h`, `90m`, `2d`, `1h30m`, `45s`, or plain seconds."""
    match = _DURATION.fullmatch(value.strip().lower())
    if value.isdigit():
        duration = timedelta(seconds=int(value))
    elif not value.strip() or match is None:
        raise argparse.ArgumentTypeError(f"not a duration like 24h, 90m or 2d: {value!r}")
    else:
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if duration > timedelta(days=365):
        raise argparse.ArgumentTypeError("a duration of at most 365 days")
    return duration


def uuid_argument(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def progress(message: str) -> None:
    print(f"orbit-exports: {message}", file=sys.stderr, flush=True)  # noqa: T201


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, load the settings, set up logging, run the chosen command: the exit code (2 for
    bad input or configuration, in one line that never repeats a secret)."""
    args = parser.parse_args(argv)
    settings = load_settings()
    if settings is None:
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        result: int = args.handler(args, settings)
    except ConfigurationError as exc:
        return report_configuration_error(str(exc))
    return result


def load_settings() -> Settings | None:
    """The settings, or None after printing one line that says what is wrong with them."""
    try:
        return get_settings()
    except ValidationError as exc:
        report_configuration_error(describe_invalid_settings(exc))
        return None


def ready_database_url(settings: Settings) -> str:
    """The database URL; the embedded default is also migrated, so it is always usable."""
    if settings.database_url is not None:
        # Without importing the database stack: with several workers this process only
        # supervises them, and its imports would delay their start.
        return settings.database_url.get_secret_value()
    from app.db.embedded import embedded_postgres_url
    from app.db.migrations import run_migrations

    pgdata = settings.orbit_data_dir.resolve() / "postgres"
    if not (pgdata / "PG_VERSION").exists():
        progress(f"initialising the embedded Postgres in {pgdata} (first start only)...")
    else:
        progress(f"starting the embedded Postgres in {pgdata}...")
    started = time.monotonic()
    url = embedded_postgres_url(settings.orbit_data_dir)
    run_migrations(url)
    progress(f"Postgres ready and migrated in {time.monotonic() - started:.1f} s")
    return url


def in_transaction(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work(conn)` in one transaction on a short-lived engine."""
    from app.db.engine import create_engine

    url = ready_database_url(settings)

    async def run() -> T:
        engine = create_engine(settings, url)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())
