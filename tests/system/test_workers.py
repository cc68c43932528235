"""`orbit-exports serve` with WEB_CONCURRENCY=2: uvicorn's own worker processes, replaced when
one dies, and stopped when their supervisor is killed outright (app/core/process.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.processes import SERVER_PIDS, server_process, workers_of

TWO_WORKERS = {"WEB_CONCURRENCY": "2", "DB_POOL_SIZE": "2", "RATE_LIMIT_PER_MINUTE": "0"}


@pytest.fixture(scope="module")
def two_workers(
    cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, psutil.Process]]:
    with server_process(cli_env, tmp_path_factory.mktemp("workers"), TWO_WORKERS) as url:
        yield url, psutil.Process(SERVER_PIDS[url])


def all_answer(url: str, times: int = 20) -> None:
    for _ in range(times):
        # A new connection each time, so the kernel hands them to either worker.
        response = httpx.get(url + "/livez", headers={"Connection": "close"})
        assert response.status_code == 200


def test_uvicorn_runs_the_configured_number_of_workers(
    two_workers: tuple[str, psutil.Process],
) -> None:
    url, supervisor = two_workers
    assert len(workers_of(supervisor)) == 2
    all_answer(url)


def test_a_worker_killed_outright_is_replaced(two_workers: tuple[str, psutil.Process]) -> None:
    url, supervisor = two_workers
    victim = workers_of(supervisor)[0]
    victim.kill()
    victim.wait(10)
    deadline = time.monotonic() + 20
    while victim.pid in [w.pid for w in workers_of(supervisor)]:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
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
