"""What the suite-wide log check (`tests/fixtures/logs.py`) searches every log line for."""

from __future__ import annotations

import logging
from pathlib import Path

# Every API key, JWT and download token the suite handles.
SECRETS: set[str] = set()
# Logs of every server process the suite starts.
LOG_FILES: list[Path] = []
# How many apps the suite ran in this process (their log lines must reach the capture).
IN_PROCESS_APPS = {"started": 0}


class KeepLines(logging.Handler):
    """Keeps every record formatted as a log file would receive it, traceback included."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter("%(name)s %(message)s").format(record))
