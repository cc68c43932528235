"""The suite's fixtures live in `tests/fixtures/` (loaded below) and its helpers in
`tests/support/`. Tests are marked by what they need, so a subset can be picked with `-m`:
`unit` (nothing outside the process), `integration` (Postgres and the B2 emulator), `system`
(real server processes, browsers, images: everything under `tests/system/`).

The tests run in a random order (pytest-randomly), a new one each run: the seed is printed at
the start and the end, `--randomly-seed=N` runs an order again and `-p no:randomly` runs the
files' order."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.storage",
    "tests.fixtures.app",
    "tests.fixtures.world",
    "tests.fixtures.logs",
    "tests.fixtures.pgbouncer",
    "tests.fixtures.redis",
    "tests.fixtures.s3",
]

settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("deep", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Fixtures that reach Postgres or the emulator make a test an integration test.
_INTEGRATION_FIXTURES = {
    "database_url",
    "server_url",
    "db",
    "emulator",
    "b2",
    "make_settings",
    "pgbouncer_url",
    "redis_url",
    "s3_server",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/system/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.system)
        elif _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


def _order(config: pytest.Config) -> str | None:
    if not config.pluginmanager.hasplugin("randomly"):
        return None
    seed = config.getoption("randomly_seed")
    return f"random test order: --randomly-seed={seed} runs it again"


def pytest_sessionstart(session: pytest.Session) -> None:
    # pytest-randomly says it in the header, which -q (the Makefile's and CI's) leaves out.
    order = _order(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if order and reporter is not None and session.config.get_verbosity() < 0:
        reporter.write_line(order)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Again at the end, beside the failures it may be needed to reproduce.
    order = _order(terminalreporter.config)
    if order:
        terminalreporter.write_line(order)
