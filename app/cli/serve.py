"""`orbit-exports serve` (run the API with uvicorn) and `orbit-exports migrate`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from app.cli.common import ready_database_url
from app.core.process import METRICS_DIR_ENV, SUPERVISOR_PID_ENV
from app.core.settings import ConfigurationError, Settings, get_settings

# The files prometheus-client's multiprocess mode writes: `<type>_<pid>.db`.
_SAMPLE_FILE = re.compile(r"(counter|gauge_[a-z]+|histogram|summary)_\d+\.db")


class MetricsDirNotOurs(ConfigurationError):
    """PROMETHEUS_MULTIPROC_DIR holds files the service did not write."""


def _prepare_metrics_dir() -> Path | None:
    """An empty folder for this run's metric samples, shared by every worker: the operator's
    PROMETHEUS_MULTIPROC_DIR, cleared of an earlier run's sample files only (a folder holding
    anything else is refused, never emptied), or a new temporary one (returned, to be
    removed)."""
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        entries = list(folder.iterdir())
        foreign = [p.name for p in entries if not (p.is_file() and _SAMPLE_FILE.fullmatch(p.name))]
        if foreign:
            raise MetricsDirNotOurs(
                f"{METRICS_DIR_ENV} must be an empty folder or one holding only metric samples"
                f" ({len(foreign)} other entries in it)"
            )
        for entry in entries:
            entry.unlink()
        return None
    folder = Path(tempfile.mkdtemp(prefix="orbit-metrics-"))
    os.environ[METRICS_DIR_ENV] = str(folder)
    return folder


def run_server(settings: Settings, host: str, port: int) -> None:
    """Serve `app.main:app` with uvicorn until it stops. The app and its workers read their
    settings from the environment, where the resolved DATABASE_URL is put first."""
    import uvicorn

    from app.cli.uvicorn_compat import run_workers

    # Several workers share one metrics folder; nothing may import prometheus-client before
    # the folder is in the environment.
    shared_metrics = settings.web_concurrency > 1 or METRICS_DIR_ENV in os.environ
    metrics_dir = _prepare_metrics_dir() if settings.metrics_enabled and shared_metrics else None
    os.environ["DATABASE_URL"] = ready_database_url(settings)
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
    get_settings.cache_clear()
    try:
        options: dict[str, Any] = dict(
            host=host,
            port=port,
            workers=settings.web_concurrency,
            # uvicorn's own lines go through our JSON (or console) handler.
            log_config=None,
            log_level=settings.log_level.lower(),
            proxy_headers=False,
            # One structured line per request comes from the app (app.access) instead.
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
            http=(
                "app.cli.uvicorn_compat:HeaderBoundedHttpToolsProtocol"
                if settings.http_parser == "httptools"
                else "h11"
            ),
            h11_max_incomplete_event_size=settings.max_header_bytes,
            # A backstop for connection floods; the app's own limit answers in the envelope.
            limit_concurrency=settings.max_concurrent_requests * 4,
        )
        if settings.web_concurrency > 1:
            # uvicorn's supervisor, except that SIGHUP reloads the workers in place.
            run_workers(uvicorn.Config("app.main:app", **options))
        else:
            uvicorn.run("app.main:app", **options)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    settings.check_serving()
    run_server(settings, args.host or settings.host, args.port or settings.port)
    return 0


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.db.connection import database_url, redact
    from app.db.migrations import run_migrations

    url = database_url(settings)
    run_migrations(url, settings)
    print(f"migrated {redact(url)} to head")  # noqa: T201
    if settings.db_service_role is not None:
        print(  # noqa: T201
            f"granted {settings.db_service_role} what the service reads, statement_timeout"
            f" {settings.db_statement_timeout_ms} ms"
        )
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = sub.add_parser("serve", help="run the API")
    command.add_argument("--host", help="address to listen on (default: HOST, or 127.0.0.1)")
    command.add_argument("--port", type=int, help="port to listen on (default: PORT, or 8000)")
    command.set_defaults(handler=serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(handler=migrate)
