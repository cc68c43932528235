"""Real servers started by the tests: free ports, waiting for them, and `orbit-exports serve`.

`free_port` is the demo's: one set of handed-out ports for everything this process starts."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
from orbit_dev.children import free_port

from tests.support.constants import CLI
from tests.support.secrets import LOG_FILES

# The `serve` process behind each server_process URL.
SERVER_PIDS: dict[str, int] = {}


def wait_for_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def server_process(
    env: dict[str, str], log_dir: Path, extra: dict[str, str] | None = None
) -> Iterator[str]:
    """A real `orbit-exports serve` on a free port, its output kept in `log_dir` (and searched
    for secrets at the end); yields its base URL once /livez answers."""
    port = free_port()
    log = log_dir / "server.log"
    LOG_FILES.watch(log)
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [CLI, "serve", "--port", str(port)],
            env=env | (extra or {}),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    SERVER_PIDS[url] = proc.pid
    try:
        wait_for_http(url + "/livez")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def is_worker(process: psutil.Process) -> bool:
    # uvicorn's workers are multiprocessing's spawned interpreters; the spawn context also runs
    # a resource tracker beside them, which is not a worker.
    command = " ".join(process.cmdline())
    return "multiprocessing.spawn" in command and "resource_tracker" not in command


def workers_of(supervisor: psutil.Process, count: int = 2) -> list[psutil.Process]:
    """The supervisor's worker processes, once there are `count` of them."""
    deadline = time.monotonic() + 20
    while len(workers := [p for p in supervisor.children() if is_worker(p)]) != count:
        assert time.monotonic() < deadline, supervisor.children()
        time.sleep(0.1)
    return workers
