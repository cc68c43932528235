"""A `Database` of the tests' own, for tests that drive it (or what sits on it) directly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.core.settings import Settings
from app.db.database import Database


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[Database]:
    """A `Database` with a pool of its own, closed at the end."""
    assert settings.database_url is not None
    db = Database(settings, settings.database_url.get_secret_value())
    try:
        yield db
    finally:
        await db.close()
