"""`orbit-exports`: the service's command for operators, the compose stack and the tests.

Every subcommand reads the same `Settings` (environment, optional `.env`, container secrets).
In development, with no DATABASE_URL, commands that need the database start the embedded
Postgres and migrate it. Developer tools (the B2 emulator, the demo, tokens, test exports) are
the separate `orbit-dev` command (`devtools/`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from app.cli import api_keys, audit, serve
from app.cli.common import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbit-exports", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parsers(sub)
    api_keys.add_parser(sub)
    audit.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
