"""`orbit-dev cluster` (`make cluster`): the fleet topology as plain local processes.

Postgres (the embedded one, or DATABASE_URL), PgBouncer in transaction pooling mode in front of
it, Redis (REDIS_URL, or a redis-server of its own), the B2 emulator (unless B2 credentials are
set), three `orbit-exports serve` replicas, and HAProxy in front of them with health checks on
/readyz. Debian's pgbouncer, redis-server and haproxy are used (`make cluster` installs the
missing ones). Prints the URL, a fresh API key and curl lines; Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from app.cli.common import in_transaction, progress, ready_database_url
from app.core.process import die_with_parent
from app.core.settings import Settings, get_settings
from app.db.connection import asyncpg_dsn
from orbit_dev.children import free_port, keep_free

REPLICAS = 3


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


@contextmanager
def child(
    command: list[str], what: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as sink:
        proc = subprocess.Popen(  # noqa: S603 - our own commands and Debian's daemons
            command,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        progress(f"stopped {what}")


def binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed (make cluster installs it with apt)")
    return found


def pgbouncer_command(database_url: str, folder: Path) -> tuple[list[str], int, str]:
    """PgBouncer in transaction mode in front of `database_url`, its files in `folder`: the
    command, its port and the URL to reach the database through it (the database's user is
    also its admin, for PAUSE and RESUME)."""
    parts = urlsplit(asyncpg_dsn(database_url))
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    host = socket_dir or parts.hostname or "127.0.0.1"
    user = parts.username or "postgres"
    dbname = parts.path.lstrip("/") or "postgres"
    port = free_port()
    (folder / "users.txt").write_text(f'"{user}" "{parts.password or ""}"\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n{dbname} = host={host} port={parts.port or 5432} dbname={dbname}\n\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {folder}/users.txt\nadmin_users = {user}\npool_mode = transaction\n"
        "default_pool_size = 20\nmax_client_conn = 500\n"
        "ignore_startup_parameters = statement_timeout\nquery_timeout = 5\n"
        # After a failed login (Postgres restarting), retry within a second, not 15.
        "server_login_retry = 1\n"
        f"logfile = {folder}/pgbouncer.log\npidfile = {folder}/pgbouncer.pid\n"
    )
    command = [binary("pgbouncer"), "-q", str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses root; run it as the owner of the server's socket folder, else as
        # `postgres`.
        owner = pwd.getpwuid(os.stat(socket_dir).st_uid).pw_name if socket_dir else "postgres"
        command[1:1] = ["-u", owner]
    password = f":{parts.password}" if parts.password else ""
    return command, port, f"postgresql://{user}{password}@127.0.0.1:{port}/{dbname}"


def start_pgbouncer(stack: ExitStack, database_url: str, folder: Path, logs: Path) -> str:
    """PgBouncer in transaction mode in front of `database_url`; returns its URL."""
    command, port, url = pgbouncer_command(database_url, folder)
    proc = stack.enter_context(child(command, "PgBouncer", logs / "pgbouncer.log"))
    wait_for_port(port, proc, "PgBouncer")
    return url


def redis_command(port: int) -> list[str]:
    return [
        binary("redis-server"), "--bind", "127.0.0.1", "--port", str(port),
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip


def start_redis(stack: ExitStack, logs: Path) -> str:
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    port = free_port()
    proc = stack.enter_context(child(redis_command(port), "Redis", logs / "redis.log"))
    wait_for_port(port, proc, "Redis")
    return f"redis://127.0.0.1:{port}/0"


def haproxy_config(port: int, backends: list[int]) -> str:
    """deploy/compose/haproxy.cfg's settings, for replicas on this machine."""
    servers = "\n".join(
        f"    server replica{i} 127.0.0.1:{p} check" for i, p in enumerate(backends, 1)
    )
    return (
        "global\n    maxconn 2000\n\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n"
        "    timeout server 30s\n    retries 3\n    option redispatch 1\n"
        "    retry-on conn-failure empty-response\n    option forwardfor\n\n"
        f"frontend api\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\n"
        "backend replicas\n    balance roundrobin\n    option httpchk GET /readyz\n"
        "    http-check expect status 200\n    default-server inter 500ms fall 2 rise 2\n"
        f"{servers}\n"
    )


def _haproxy(stack: ExitStack, port: int, backends: list[int], folder: Path, logs: Path) -> None:
    (folder / "haproxy.cfg").write_text(haproxy_config(port, backends))
    proc = stack.enter_context(
        child(
            [binary("haproxy"), "-db", "-f", str(folder / "haproxy.cfg")],
            "HAProxy",
            logs / "haproxy.log",
        )
    )
    wait_for_port(port, proc, "HAProxy")


def _new_key(settings: Settings) -> str:
    from app.auth.api_keys import create_api_key
    from orbit_dev.demo import ORG

    key, _ = in_transaction(settings, lambda conn: create_api_key(conn, ORG, "cluster"))
    return key


def _smoke(base: str, path: str, key: str, token: str) -> int:
    """`--smoke` (`make cluster SMOKE=1`, run by CI): the printed requests answer 200 through
    HAProxy, on every replica in turn (round robin); then everything stops."""
    credentials = [{"X-API-Key": key}, {"Authorization": f"Bearer {token}"}] * REPLICAS
    statuses = [httpx.get(base + path, headers=h, timeout=10).status_code for h in credentials]
    progress(f"smoke: {len(statuses)} requests through HAProxy answered {sorted(set(statuses))}")
    return 0 if set(statuses) == {200} else 1


def cmd_cluster(args: argparse.Namespace, settings: Settings) -> int:
    from app.core.local_secrets import persistent_secret
    from orbit_dev import demo
    from orbit_dev.children import start_emulator

    direct = ready_database_url(settings)
    os.environ["DATABASE_URL"] = direct
    if settings.jwt_secret is None:
        os.environ["JWT_SECRET"] = persistent_secret(settings.orbit_data_dir / "jwt-secret")
    port = args.port or settings.port
    keep_free(port)
    stop = {"now": False}
    # Ctrl-C and SIGTERM end the wait below, so everything is stopped in order, not from
    # wherever a KeyboardInterrupt would land.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.update(now=True))
    with ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="orbit-cluster-"))
        folder.chmod(0o777)  # PgBouncer runs as another user
        stack.callback(shutil.rmtree, folder, True)
        if not settings.storage_configured:
            emulator = start_emulator(args.bucket, settings.cors_allow_origins)
            stack.callback(emulator.terminate)
        get_settings.cache_clear()
        settings = get_settings()
        data = demo.seed(settings, args.bucket)
        key = _new_key(settings)
        logs = settings.orbit_data_dir.resolve() / "cluster"
        logs.mkdir(parents=True, exist_ok=True)
        pooled = start_pgbouncer(stack, direct, folder, logs)
        redis_url = start_redis(stack, logs)
        env = os.environ | {
            "DATABASE_URL": pooled,
            "DATABASE_LISTEN_URL": direct,
            "DB_PREPARED_STATEMENTS": "false",
            "REDIS_URL": redis_url,
            "WEB_CONCURRENCY": "1",
            # HAProxy, on this machine, says who the client is (the audit's client_ip).
            "TRUSTED_PROXIES": "127.0.0.1",
            # Served on while HAProxy takes a stopping replica out (a rolling restart).
            "SHUTDOWN_DELAY_SECONDS": "2",
        }
        backends = [free_port() for _ in range(REPLICAS)]

        def replica(index: int) -> subprocess.Popen[bytes]:
            port = backends[index]
            command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
            log = logs / f"replica-{index + 1}.log"
            return stack.enter_context(child(command, f"replica on {port}", log, env))

        replicas = [replica(i) for i in range(REPLICAS)]
        for proc, p in zip(replicas, backends, strict=True):
            wait_for_port(p, proc, f"the replica on port {p}")
        _haproxy(stack, port, backends, folder, logs)
        base = f"http://127.0.0.1:{port}"
        path = data.path(demo.COMPLETED)
        for _ in range(100):
            if httpx.get(base + "/readyz").status_code == 200:
                break
            time.sleep(0.1)
        print(  # noqa: T201
            f"\norbit-exports cluster: {REPLICAS} replicas behind HAProxy at {base}\n"
            f"  Postgres {direct.split('@')[-1]} via PgBouncer {pooled.split('@')[-1]},"
            f" Redis {redis_url.split('@')[-1]}\n\n"
            f"API key (shown only now): {key}\n\n"
            f"  curl -s -H 'X-API-Key: {key}' {base}{path}\n"
            f"  curl -s -H 'Authorization: Bearer {data.token}' {base}{path}\n"
            f"  curl -s {base}/readyz\n\n"
            f"Logs: {logs}/\n"
            "Stop with Ctrl-C.",
            flush=True,
        )
        if args.smoke:
            return _smoke(base, path, key, data.token)
        while not stop["now"]:
            time.sleep(0.2)
            for index, proc in enumerate(replicas):
                # As an orchestrator would: HAProxy routes around it meanwhile.
                if proc.poll() is not None and not stop["now"]:
                    progress(f"replica {index + 1} exited ({proc.returncode}); restarting")
                    replicas[index] = replica(index)
    return 0
