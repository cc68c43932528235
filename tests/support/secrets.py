"""What the suite-wide log check (`tests/fixtures/logs.py`) searches every log line for, and how
it names the test behind a line that leaks one.

Each line this process logs is kept with what was running when it was logged (a test's setup,
call or teardown, and the fixture being set up, if any). A server's log file is read at the end,
so for it the check knows which test started the server (or in whose setup a fixture did) and,
from the file's size at every start and end of a test phase, which phases ran while a line was
written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Every API key, JWT and download token the suite handles.
SECRETS: set[str] = set()
# How many apps the suite ran in this process (their log lines must reach the capture).
IN_PROCESS_APPS = {"started": 0}
# Lines shown per leaked secret and log: enough to find the test, short enough to read.
SHOWN_PER_SECRET = 3


@dataclass
class Running:
    """What the suite is doing now, as the hooks of `tests/fixtures/logs.py` report it."""

    nodeid: str | None = None
    phase: str | None = None
    fixtures: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.nodeid is None:
            return "before the first test"
        if self.phase is None:
            return f"between tests, after {self.nodeid}"
        where = f"{self.phase} of {self.nodeid}"
        return f"fixture {self.fixtures[-1]} in {where}" if self.fixtures else where

    @contextlib.contextmanager
    def phase_of(self, nodeid: str, phase: str) -> Iterator[None]:
        LOG_FILES.mark(self.describe())
        self.nodeid, self.phase = nodeid, phase
        try:
            yield
        finally:
            LOG_FILES.mark(self.describe())
            self.phase = None

    @contextlib.contextmanager
    def fixture(self, name: str) -> Iterator[None]:
        self.fixtures.append(name)
        try:
            yield
        finally:
            self.fixtures.pop()


RUNNING = Running()


@dataclass(frozen=True)
class KeptLine:
    text: str
    logged_during: str


class KeepLines(logging.Handler):
    """Keeps every record formatted as a log file would receive it, traceback included, with
    what was running when it was logged."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.kept: list[KeptLine] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = logging.Formatter("%(name)s %(message)s").format(record)
        self.kept.append(KeptLine(text, RUNNING.describe()))

    @property
    def lines(self) -> list[str]:
        return [line.text for line in self.kept]


@dataclass
class LogFile:
    """A server's log file, with who started the server and what ran while it grew."""

    path: Path
    started_during: str
    # (the file's size at the end of a period, what ran during that period), for each period
    # in which it grew.
    periods: list[tuple[int, str]] = field(default_factory=list)

    def mark(self, period: str) -> None:
        """`period` just ended: whatever the file gained since the last mark was written then."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size > (self.periods[-1][0] if self.periods else 0):
            self.periods.append((size, period))

    def written_during(self, start: int, end: int) -> list[str]:
        """What ran while bytes [start, end) were written (after the last mark: "the end of
        the session")."""
        found: list[str] = []
        begun = 0
        for size, period in self.periods:
            if begun < end and start < size and period not in found:
                found.append(period)
            begun = size
        if end > begun:
            found.append("the end of the session")
        return found


class LogFiles:
    def __init__(self) -> None:
        self.files: list[LogFile] = []

    def watch(self, path: Path) -> None:
        """Search `path` at the end, naming what is running now as its server's starter."""
        self.files.append(LogFile(path, RUNNING.describe()))

    def mark(self, period: str) -> None:
        for log in self.files:
            log.mark(period)


# Logs of every server process the suite starts.
LOG_FILES = LogFiles()


@dataclass(frozen=True)
class Leak:
    secret: str
    where: str
    line: str

    def __str__(self) -> str:
        return f"{self.secret} {self.where}:\n    {self.line}"


def shown(secret: str) -> str:
    return secret[:10] + "..."


def _excerpt(line: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        line = line.replace(secret, f"<{shown(secret)}>")
    line = line.rstrip("\r\n").replace("\n", " | ")
    return line if len(line) <= 240 else line[:237] + "..."


def leaks_in_lines(lines: list[KeptLine], secrets: Iterable[str]) -> list[Leak]:
    """Each secret found in this process's lines, with what was running when it was logged."""
    # One search of all the text per secret; the lines are only gone through for a leak.
    text = "\n".join(line.text for line in lines)
    leaked = sorted(s for s in secrets if s and s in text)
    found = []
    for secret in leaked:
        for line in [line for line in lines if secret in line.text][:SHOWN_PER_SECRET]:
            where = f"logged in this process during {line.logged_during}"
            found.append(Leak(shown(secret), where, _excerpt(line.text, leaked)))
    return found


def leaks_in_file(log: LogFile, secrets: Iterable[str]) -> list[Leak]:
    """Each secret found in a server's log file, with what started the server and what ran
    while the line was written."""
    if not log.path.exists():
        return []
    data = log.path.read_bytes()
    leaked = sorted(s for s in secrets if s and s.encode() in data)
    found = []
    for secret in leaked:
        needle, offset, hits = secret.encode(), 0, 0
        for raw in data.splitlines(keepends=True):
            start, offset = offset, offset + len(raw)
            if needle not in raw or hits == SHOWN_PER_SECRET:
                continue
            hits += 1
            during = " and ".join(log.written_during(start, offset))
            where = (
                f"in {log.path} (its server started during {log.started_during}),"
                f" written during {during}"
            )
            line = raw.decode(errors="replace")
            found.append(Leak(shown(secret), where, _excerpt(line, leaked)))
    return found
