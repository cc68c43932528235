"""What the demo and the local cluster start beside the service: the B2 emulator as a child
process, and the demo's own JWT secret."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.cli.common import progress
from app.core.process import die_with_parent


def persistent_secret(path: Path) -> str:
    """A JWT secret for the demo, made once and kept in the data folder (mode 0600)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_emulator(bucket: str, cors_origins: list[str]) -> subprocess.Popen[bytes]:
    """Run the B2 emulator beside the API and point this process's settings at it."""
    import httpx

    port = free_port()
    key_id, key = "demo-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    command = [sys.executable, "-m", "orbit_dev.cli", "b2-emulator", "--port", str(port)]
    # `--key=...`: a random key may start with "-", which argparse would take for an option.
    command += [f"--key-id={key_id}", f"--key={key}", "--bucket", bucket]
    # The dashboard origins the API accepts may also download from the demo bucket.
    command += [f"--cors-origin={origin}" for origin in cors_origins]
    proc = subprocess.Popen(command, preexec_fn=die_with_parent)  # noqa: S603 - our own module
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(f"{url}/_emulator/health", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the B2 emulator did not start") from None
            time.sleep(0.05)
    os.environ |= {"B2_APPLICATION_KEY_ID": key_id, "B2_APPLICATION_KEY": key, "B2_REALM": url}
    progress(f"no B2 credentials configured: B2 emulator started at {url}")
    return proc
