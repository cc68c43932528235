"""What `bench.py` and `soak.py` share: free loopback ports (the dev tools' `free_port`, which
never hands the same port out twice), waiting for a process to answer, writing measured
figures into a docs page between `<!-- NAME:start/end -->` markers, and the smoke mode.

SMOKE=1 (`make smoke`, run by CI) runs each long target for a few seconds on a few rows, so a
target that no longer works fails CI the day it breaks; its figures mean nothing and no docs
page is written."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
from orbit_dev.children import free_port

__all__ = ["SMOKE", "free_port", "replace_section", "smoke_or", "wait_for"]

SMOKE = os.environ.get("SMOKE") == "1"


def smoke_or(name: str, full: str, smoke: str) -> str:
    """The setting `name` from the environment, else its full or its smoke default."""
    return os.environ.get(name, smoke if SMOKE else full)


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    """Seconds until `url` answers; fails if `proc` exits or `timeout` passes first."""
    started = time.monotonic()
    while True:
        try:
            httpx.get(url, timeout=1)
            return time.monotonic() - started
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.02)


def replace_section(doc: Path, name: str, text: str) -> None:
    if SMOKE:
        return
    content = doc.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    before, rest = content.split(start, 1)
    doc.write_text(f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")
