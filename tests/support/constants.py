"""Credentials and names the suite uses for its own emulator, database and tokens."""

from __future__ import annotations

import sys
from pathlib import Path

B2_KEY_ID = "test-key-id"
B2_KEY = "test-application-key-0123456789"
BUCKET = "orbit-exports-test"
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
SHARED_STATE_SECRET = "test-shared-state-secret-0123456789abcdef"
# The service's command and the developer tools' command, from this virtualenv.
CLI = str(Path(sys.executable).parent / "orbit-exports")
DEV_CLI = str(Path(sys.executable).parent / "orbit-dev")
