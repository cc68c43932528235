"""The database URL (given, or the embedded Postgres in development), the connection options
every session of the service uses, and the SQLAlchemy engine of the command-line tools."""

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


def asyncpg_dsn(url: str) -> str:
    """The SQLAlchemy URL as asyncpg takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def connect_options(settings: Settings) -> dict[str, Any]:
    """`asyncpg.connect` keyword arguments for every session the service opens."""
    options: dict[str, Any] = {
        "timeout": settings.db_connect_timeout_seconds,
        "command_timeout": settings.db_statement_timeout_ms / 1000 + 1,
        "server_settings": {
            "application_name": APPLICATION_NAME,
            "statement_timeout": str(settings.db_statement_timeout_ms),
        },
    }
    if not settings.db_prepared_statements:
        # Behind PgBouncer in transaction mode consecutive statements may reach different
        # server sessions: asyncpg then sends unnamed statements only.
        options["statement_cache_size"] = 0
    return options


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


def create_engine(settings: Settings, url: str) -> AsyncEngine:
    """The engine of the command-line tools and the tests (the request path uses `Database`)."""
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
