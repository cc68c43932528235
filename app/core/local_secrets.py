"""Secrets made once and kept in the data folder (ORBIT_DATA_DIR, mode 0600), for development
only: the demo's JWT secret, the fleet's shared-state secret when none is set. Every process on
the machine that uses the same folder gets the same value, even when several start at once."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def persistent_secret(path: Path) -> str:
    """The secret kept at `path`, made (48 random bytes, URL-safe) if there is none yet."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        # Atomic, and refused if another process got there first: then theirs is the one.
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(draft)
    return path.read_text().strip()
