"""Alembic environment: async engine, URL from `orbit-exports migrate` (or the settings)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.tables import metadata

config = context.config


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    from app.core.settings import get_settings
    from app.db.connection import database_url

    return database_url(get_settings())


# A migration waits at most this long for a table lock: queued behind a long transaction, its
# ACCESS EXCLUSIVE request would otherwise hold up every read of the serving fleet behind it.
# It fails instead, to be run again; migrations are written to need such a lock only briefly
# (docs/operations.md, "Schema changes").
LOCK_TIMEOUT = "5s"


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        context.run_migrations()


async def _run() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_migrate)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run())
