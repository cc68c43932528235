"""The suite's own check for secrets in logs (`tests/fixtures/logs.py`) names, for every line
that leaks one, the test that produced it: for this process's lines, the test phase (and the
fixture being set up) that logged it; for a server's log file, what started the server and the
test phases that ran while the line was written."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.secrets import KeepLines, LogFile, leaks_in_file, leaks_in_lines

# Made up here and never registered as one of the suite's secrets: the session-wide check does
# not look for it.
LEAKED = "sk_made_up_for_the_scan_test_0123456789abcdef"


@pytest.fixture
def kept() -> Iterator[KeepLines]:
    """A capture of a logger of its own, which logs the secret while this fixture is set up."""
    logger = logging.getLogger("tests.secret_scan")
    logger.propagate = False
    keep = KeepLines()
    logger.addHandler(keep)
    logger.warning("set up with %s", LEAKED)
    yield keep
    logger.removeHandler(keep)


def test_a_line_logged_here_names_the_test_phase_and_fixture_that_logged_it(
    kept: KeepLines, request: pytest.FixtureRequest
) -> None:
    logging.getLogger("tests.secret_scan").warning("called with %s", LEAKED)
    leaks = leaks_in_lines(kept.kept, {LEAKED, "a secret nobody logged"})
    me = request.node.nodeid
    assert [leak.where for leak in leaks] == [
        f"logged in this process during fixture kept in setup of {me}",
        f"logged in this process during call of {me}",
    ]
    assert [leak.line for leak in leaks] == [
        "tests.secret_scan set up with <sk_made_up...>",
        "tests.secret_scan called with <sk_made_up...>",
    ]
    assert all(LEAKED not in str(leak) for leak in leaks)


def append(path: Path, text: str) -> None:
    with path.open("a") as sink:
        sink.write(text)


def test_a_line_in_a_server_log_names_its_starter_and_what_ran_while_it_was_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.log"
    log = LogFile(path, "fixture live_server in setup of tests/a.py::test_one")
    log.mark("before the first test")  # not there yet
    append(path, "started\n")
    log.mark("fixture live_server in setup of tests/a.py::test_one")
    append(path, f"GET with {LEAKED}\n")
    log.mark("call of tests/a.py::test_one")
    log.mark("teardown of tests/a.py::test_one")  # nothing written meanwhile
    append(path, f"half a line: {LEAKED[:5]}")
    log.mark("setup of tests/b.py::test_two")
    append(path, f"{LEAKED[5:]}, the rest\n")
    log.mark("call of tests/b.py::test_two")
    append(path, f"stopping, still saying {LEAKED}\n")

    leaks = leaks_in_file(log, {LEAKED})

    starter = f"in {path} (its server started during fixture live_server in setup of"
    assert all(leak.where.startswith(starter + " tests/a.py::test_one),") for leak in leaks)
    assert [leak.where.split("), ", 1)[1] for leak in leaks] == [
        "written during call of tests/a.py::test_one",
        "written during setup of tests/b.py::test_two and call of tests/b.py::test_two",
        "written during the end of the session",
    ]
    assert [leak.line for leak in leaks] == [
        "GET with <sk_made_up...>",
        "half a line: <sk_made_up...>, the rest",
        "stopping, still saying <sk_made_up...>",
    ]


def test_a_server_log_without_the_secret_or_never_written_has_no_leak(tmp_path: Path) -> None:
    written = tmp_path / "written.log"
    written.write_text("nothing to see\n")
    assert leaks_in_file(LogFile(written, "call of t"), {LEAKED}) == []
    assert leaks_in_file(LogFile(tmp_path / "never.log", "call of t"), {LEAKED}) == []
