"""SQLAlchemy's async engine, for the operator commands (`orbit-exports api-keys`), the
developer tools and the tests: statements written with SQLAlchemy Core against
`app.db.tables`, in transactions. The request path never uses it: it sends its few read-only
statements through `app.db.database.Database`, on asyncpg's pool."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.settings import Settings
from app.db.connection import connect_options


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


def create_engine(settings: Settings, url: str) -> AsyncEngine:
    connect_args = connect_options(settings)
    if not settings.db_prepared_statements:
        # SQLAlchemy's own statements get names no other session can have (its asyncpg
        # dialect documents this for PgBouncer).
        connect_args |= {
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _unique_statement_name,
        }
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        connect_args=connect_args,
    )
