"""The database URL (given, or the embedded Postgres in development) and the async engine."""

from __future__ import annotations

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


def create_engine(settings: Settings, url: str) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": settings.db_statement_timeout_ms / 1000 + 1,
            "server_settings": {
                "application_name": APPLICATION_NAME,
                "statement_timeout": str(settings.db_statement_timeout_ms),
            },
        },
    )
