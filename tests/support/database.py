"""A `Database` of the tests' own, for tests that drive it (or what sits on it) directly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.core.settings import Settings
from app.db.database import Database
from app.db.engine import create_engine


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[Database]:
    """A `Database` on an engine of its own, closed at the end (kept connections given back,
    then the engine disposed of)."""
    assert settings.database_url is not None
    db = Database(create_engine(settings, settings.database_url.get_secret_value()), settings)
    try:
        yield db
    finally:
        await db.close()
