"""`python -m app.cli`: the same as the `orbit-exports` command."""

from app.cli import main

raise SystemExit(main())
