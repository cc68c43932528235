"""`orbit-exports`: the service's command for operators, the compose stack and the tests.

Every subcommand reads the same `Settings` (environment, optional `.env`, container secrets).
In development, with no DATABASE_URL, commands that need the database start the embedded
Postgres and migrate it. Developer tools (the B2 emulator, the demo, tokens, test exports) are
the separate `orbit-dev` command (`devtools/`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.cli import api_keys, serve
from app.cli.common import load_settings
from app.core.logs import configure_logging
from app.db.embedded import EmbeddedPostgresMissing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbit-exports", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parsers(sub)
    api_keys.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    if settings is None:
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        result: int = args.handler(args, settings)
    except EmbeddedPostgresMissing as exc:
        print(f"configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
