"""`make cluster` (`orbit-dev cluster`): three replicas behind a real HAProxy, through a real
PgBouncer in transaction mode, sharing a real Redis, on a fresh embedded Postgres. Followed as an
operator would: the printed key works through the load balancer, a replica killed outright is
routed around, a revoked key stops on every replica within a second, Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.constants import CLI, DEV_CLI
from tests.support.processes import free_port
from tests.support.secrets import SECRETS

ORG = "0de30000-0000-4000-8000-000000000001"


@pytest.fixture
def cluster() -> Iterator[tuple[subprocess.Popen[str], str, dict[str, str]]]:
    for tool in ("haproxy", "pgbouncer", "redis-server"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} is not installed (make cluster installs it)")
            pytest.skip(f"{tool} is not installed (make cluster installs it)")
    # Outside pytest's private temporary folder: PgBouncer runs as the server's owner.
    data = Path(tempfile.mkdtemp(prefix="orbit-cluster-test-"))
    data.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("B2_", "JWT_", "DATABASE_", "REDIS_", "RATE_LIMIT", "WEB_CONC"))
    }
    env |= {"ORBIT_DATA_DIR": str(data / "data"), "LOG_LEVEL": "WARNING"}
    port = free_port()
    proc = subprocess.Popen(
        [DEV_CLI, "cluster", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if "Stop with Ctrl-C." in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "Stop with Ctrl-C." in output, output
        yield proc, output, env
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def replicas_of(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "serve" in p.cmdline() and "app.cli" in p.cmdline()
    ]


def test_the_local_fleet_serves_routes_around_a_dead_replica_and_revokes_everywhere(
    cluster: tuple[subprocess.Popen[str], str, dict[str, str]],
) -> None:
    proc, output, env = cluster
    key = re.search(r"API key \(shown only now\): (sk_\S+)", output)
    assert key is not None
    SECRETS.add(key.group(1))
    url = re.search(r"curl -s -H 'X-API-Key: \S+' (http://\S+)", output)
    assert url is not None
    headers = {"X-API-Key": key.group(1)}
    for _ in range(9):
        response = httpx.get(url.group(1), headers=headers, timeout=10)
        assert response.status_code == 200, response.text
    assert len(replicas_of(proc)) == 3

    replicas_of(proc)[0].kill()
    # HAProxy retries another replica at once and drops the dead one after two checks; the
    # cluster restarts it, as an orchestrator would.
    for _ in range(20):
        assert httpx.get(url.group(1), headers=headers, timeout=10).status_code == 200

    listing = subprocess.run(
        [CLI, "api-keys", "list", "--org", ORG], env=env, capture_output=True, text=True, check=True
    )
    key_id = next(
        line.split()[0] for line in listing.stdout.splitlines() if key.group(1)[:11] in line
    )
    subprocess.run([CLI, "api-keys", "revoke", key_id], env=env, check=True, capture_output=True)
    revoked_at = time.monotonic()
    while True:
        statuses = {httpx.get(url.group(1), headers=headers).status_code for _ in range(6)}
        if statuses == {401}:
            break
        assert time.monotonic() - revoked_at < 1.5, statuses
        time.sleep(0.05)

    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, alive
