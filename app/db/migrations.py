"""Alembic, run from code: the `migrate` command, the embedded default and the tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    # Alembic is needed only to migrate; importing it costs a tenth of the service's start.
    from alembic.config import Config


# What the service's role may do: read the tables of the request path, and append to the audit
# (never change or delete a record of it). LISTEN needs no grant.
SERVICE_ROLE_READS = ("intent_audience_exports", "api_keys")
SERVICE_ROLE_APPENDS = ("export_url_audit",)


def run_migrations(url: str, settings: Settings | None = None) -> None:
    """Apply every Alembic migration up to head, then (with DB_SERVICE_ROLE) the service role's
    grants and statement_timeout (synchronous: call it outside an event loop)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
    if settings is not None and settings.db_service_role is not None:
        asyncio.run(_grant_service_role(url, settings))


async def _grant_service_role(url: str, settings: Settings) -> None:
    import asyncpg

    from app.db.connection import asyncpg_dsn

    role = settings.db_service_role
    assert role is not None  # the setting's pattern makes it a plain identifier
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with connection.transaction():
            await connection.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
            tables = ", ".join(SERVICE_ROLE_READS)
            await connection.execute(f'GRANT SELECT ON {tables} TO "{role}"')
            appended = ", ".join(SERVICE_ROLE_APPENDS)
            await connection.execute(f'GRANT INSERT ON {appended} TO "{role}"')
            # In the role's own settings, where no pooler can drop it.
            timeout = f"{settings.db_statement_timeout_ms}ms"
            await connection.execute(f"ALTER ROLE \"{role}\" SET statement_timeout = '{timeout}'")
    except asyncpg.UndefinedObjectError:
        raise ConfigurationError(
            f"DB_SERVICE_ROLE names a role that does not exist ({role}): create it first"
        ) from None
    except asyncpg.InsufficientPrivilegeError:
        raise ConfigurationError(
            "DB_SERVICE_ROLE: the migrating role may not grant to it or set its statement_timeout"
            " (run migrate as the tables' owner with CREATEROLE, or a superuser)"
        ) from None
    finally:
        await connection.close()


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    import migrations

    folder = Path(migrations.__file__).parent
    config = Config(str(folder / "alembic.ini"))
    config.set_main_option("script_location", str(folder))
    config.attributes["url"] = url
    return config
