"""Where the database is (DATABASE_URL, or the embedded Postgres in development) and how every
connection the service opens is set up: the request path's pool (`app.db.database`), the
listening connection (`app.db.notifications`) and the commands' engine (`app.db.engine`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import make_url

from app.core.settings import Settings
from app.db.asyncpg_compat import Keepalive

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


def keepalive(settings: Settings) -> Keepalive:
    return Keepalive(
        idle=settings.db_tcp_keepalive_idle_seconds,
        interval=settings.db_tcp_keepalive_interval_seconds,
        count=settings.db_tcp_keepalive_count,
        user_timeout=settings.db_tcp_user_timeout_seconds,
    )


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
