"""The database URL (given, or the embedded Postgres in development) and the async engine."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.settings import Settings

APPLICATION_NAME = "orbit-exports"


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    from app.db.embedded import embedded_postgres_url

    return embedded_postgres_url(settings.orbit_data_dir)


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


def create_engine(settings: Settings, url: str) -> AsyncEngine:
    connect_args: dict[str, Any] = {
        "timeout": settings.db_connect_timeout_seconds,
        "command_timeout": settings.db_statement_timeout_ms / 1000 + 1,
        "server_settings": {
            "application_name": APPLICATION_NAME,
            "statement_timeout": str(settings.db_statement_timeout_ms),
        },
    }
    if not settings.db_prepared_statements:
        # Behind PgBouncer in transaction mode consecutive statements may reach different
        # server sessions: asyncpg then sends unnamed statements only, and SQLAlchemy's own
        # (the CLI's, migrations') get names no other session can have (SQLAlchemy's asyncpg
        # dialect documents both).
        connect_args |= {
            "statement_cache_size": 0,
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
