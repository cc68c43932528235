"""Alembic, run from code: the `migrate` command, the embedded default and the tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Alembic is needed only to migrate; importing it costs a tenth of the service's start.
    from alembic.config import Config


def run_migrations(url: str) -> None:
    """Apply every Alembic migration up to head (synchronous: call it outside an event loop)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    import migrations

    folder = Path(migrations.__file__).parent
    config = Config(str(folder / "alembic.ini"))
    config.set_main_option("script_location", str(folder))
    config.attributes["url"] = url
    return config
