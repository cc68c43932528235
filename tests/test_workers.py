"""`orbit-exports serve` with WEB_CONCURRENCY=2: the workers are forked from a supervisor that
imported the app once (app/cli.py), and must behave as uvicorn's own spawned workers do."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import SERVER_PIDS, server_process

TWO_WORKERS = {"WEB_CONCURRENCY": "2", "DB_POOL_SIZE": "2", "RATE_LIMIT_PER_MINUTE": "0"}


@pytest.fixture(scope="module")
def two_workers(
    cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, psutil.Process]]:
    with server_process(cli_env, tmp_path_factory.mktemp("workers"), TWO_WORKERS) as url:
        yield url, psutil.Process(SERVER_PIDS[url])


def workers_of(supervisor: psutil.Process, count: int = 2) -> list[psutil.Process]:
    """The supervisor's worker processes, once there are `count` of them."""
    deadline = time.monotonic() + 20
    while len(children := supervisor.children()) != count:
        assert time.monotonic() < deadline, children
        time.sleep(0.1)
    return children


def caught_signals(pid: int) -> set[int]:
    """Signals the process has a handler for (the kernel's SigCgt mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def all_answer(url: str, times: int = 20) -> None:
    for _ in range(times):
        # A new connection each time, so the kernel hands them to either worker.
        response = httpx.get(url + "/livez", headers={"Connection": "close"})
        assert response.status_code == 200


def test_workers_are_forked_from_the_supervisor(two_workers: tuple[str, psutil.Process]) -> None:
    url, supervisor = two_workers
    # A spawned worker runs `python -c "from multiprocessing.spawn import spawn_main..."`; a
    # forked one keeps its parent's command line. Fails if uvicorn stops letting us fork.
    for worker in workers_of(supervisor):
        assert worker.cmdline() == supervisor.cmdline()
    all_answer(url)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_forked_workers_do_not_keep_the_supervisors_signal_handlers(
    two_workers: tuple[str, psutil.Process],
) -> None:
    _, supervisor = two_workers
    assert {signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU} <= caught_signals(supervisor.pid)
    for worker in workers_of(supervisor):
        caught = caught_signals(worker.pid)
        # Their own server's handlers (graceful stop), not the supervisor's.
        assert {signal.SIGINT, signal.SIGTERM} <= caught
        assert not {signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1} & caught


def test_a_worker_killed_outright_is_replaced(two_workers: tuple[str, psutil.Process]) -> None:
    url, supervisor = two_workers
    victim = workers_of(supervisor)[0]
    victim.kill()
    victim.wait(10)
    deadline = time.monotonic() + 20
    while victim.pid in [w.pid for w in workers_of(supervisor)] or len(supervisor.children()) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
    replacement = next(w for w in supervisor.children() if w.pid != victim.pid)
    assert replacement.cmdline() == supervisor.cmdline()
    # Both workers answer: 40 fresh connections, none refused or failed.
    all_answer(url, 40)


def test_workers_stop_when_the_supervisor_is_killed_outright(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    with server_process(cli_env, tmp_path, TWO_WORKERS) as url:
        supervisor = psutil.Process(SERVER_PIDS[url])
        workers = workers_of(supervisor)
        supervisor.kill()
        # Otherwise they would go on serving on the port with nobody to stop or replace them.
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, [w.pid for w in alive]
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/livez", timeout=2)
