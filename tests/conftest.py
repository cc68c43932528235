"""Shared fixtures: a real Postgres migrated by Alembic, the B2 emulator as a real HTTP server,
the app behind httpx with its real lifespan, and helpers that mint real keys and JWTs.

Isolation: one fresh database per test session; every test makes its own organization ids, so
tests never see each other's rows and can run in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from b2sdk.v2 import B2Api, InMemoryAccountInfo
from hypothesis import settings
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.api_keys import create_api_key
from app.config import Settings
from app.db import embedded_postgres_url, run_migrations
from app.logs import QUIET_LOGGERS
from app.main import create_app
from app.tables import intent_audience_exports
from tests.contract import SEEN_DOWNLOAD_TOKENS, validate_response_hook

settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("deep", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

B2_KEY_ID = "test-key-id"
B2_KEY = "test-application-key-0123456789"
BUCKET = "orbit-exports-test"
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
CLI = str(Path(sys.executable).parent / "orbit-exports")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


# --- database ----------------------------------------------------------------------------


def _server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        return Settings(_env_file=None, database_url=configured).database_url.get_secret_value()  # type: ignore[union-attr,call-arg]
    return embedded_postgres_url(tmp_path_factory.mktemp("embedded"))


async def _admin(server_url: str, statement: str) -> None:
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _server_url(tmp_path_factory)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    name = f"orbit_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    run_migrations(url)
    yield url
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def empty_database_url(server_url: str) -> Iterator[str]:
    """A database with no migrations applied, for the unexpected-error path."""
    name = f"orbit_empty_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


# --- B2 emulator -------------------------------------------------------------------------


@dataclass
class Emulator:
    url: str

    def requests(self) -> list[dict[str, Any]]:
        log: list[dict[str, Any]] = httpx.get(f"{self.url}/_emulator/requests").json()
        return log

    def calls(self, api_name: str) -> int:
        return sum(1 for r in self.requests() if r["path"].endswith("/" + api_name))

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_emulator/requests")

    def advance_clock(self, seconds: float) -> None:
        httpx.post(f"{self.url}/_emulator/clock", json={"advanceSeconds": seconds})

    def inject(self, **faults: Any) -> None:
        """status=503, delaySeconds=2, malformed=True, apis=[...], count=N (see the emulator)."""
        httpx.post(f"{self.url}/_emulator/faults", json=faults).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/_emulator/faults").raise_for_status()

    def expire_account_tokens(self) -> None:
        httpx.post(f"{self.url}/_emulator/expire-account-tokens").raise_for_status()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    port = free_port()
    proc = subprocess.Popen(
        [
            CLI,
            "b2-emulator",
            "--port",
            str(port),
            "--key-id",
            B2_KEY_ID,
            "--key",
            B2_KEY,
            "--bucket",
            BUCKET,
        ],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/_emulator/requests")
        yield Emulator(url)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def b2(emulator: Emulator) -> B2Api:
    """A b2sdk client of the test's own, for uploading export files."""
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(emulator.url, B2_KEY_ID, B2_KEY)
    return api


# --- the app -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cli_env(
    database_url: str, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for `orbit-exports` processes: the test database and the emulator."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("B2_", "JWT_", "DATABASE_", "RATE_LIMIT", "DEMO"))
    }
    env |= {
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        "B2_APPLICATION_KEY_ID": B2_KEY_ID,
        "B2_APPLICATION_KEY": B2_KEY,
        "B2_REALM": emulator.url,
        "ORBIT_DATA_DIR": str(tmp_path_factory.mktemp("unused-data")),
    }
    return env


@contextlib.contextmanager
def server_process(
    env: dict[str, str], log_dir: Path, extra: dict[str, str] | None = None
) -> Iterator[str]:
    """A real `orbit-exports serve` on a free port, its output kept in `log_dir` (and searched
    for secrets at the end); yields its base URL once /livez answers."""
    port = free_port()
    log = log_dir / "server.log"
    LOG_FILES.append(log)
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


@pytest.fixture(scope="session")
def live_server(cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `orbit-exports serve` process (rate limiting off, for fuzzing); its log is kept."""
    # No key cache: the CLI tests check that a revoked key fails on the next request.
    extra = {"RATE_LIMIT_PER_MINUTE": "0", "API_KEY_CACHE_SECONDS": "0", "LOG_LEVEL": "DEBUG"}
    with server_process(cli_env, tmp_path_factory.mktemp("live"), extra) as url:
        yield url


# The `serve` process behind each server_process URL.
SERVER_PIDS: dict[str, int] = {}
# How many apps the suite ran in this process (their log lines must reach the capture).
IN_PROCESS_APPS = {"started": 0}
# Logs of every server process the suite starts, checked for secrets at the end.
LOG_FILES: list[Path] = []
# Every API key, JWT and download token the suite handles.
SECRETS: set[str] = set()


class KeepLines(logging.Handler):
    """Keeps every record formatted as a log file would receive it, traceback included."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter("%(name)s %(message)s").format(record))


@pytest.fixture(scope="session", autouse=True)
def no_secret_reaches_a_log() -> Iterator[None]:
    """Every log line of the suite (this process at DEBUG, with tracebacks, and the log files of
    the servers it starts) is searched for every secret the suite handled."""
    root = logging.getLogger()
    saved_level = root.level
    root.setLevel(logging.DEBUG)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    keep = KeepLines()
    root.addHandler(keep)
    yield
    root.removeHandler(keep)
    root.setLevel(saved_level)
    text = "\n".join(keep.lines)
    text += "".join(path.read_text(errors="replace") for path in LOG_FILES if path.exists())
    if SECRETS and IN_PROCESS_APPS["started"]:
        assert any(line.startswith("app.") for line in keep.lines), "the log capture is not wired"
    secrets = SECRETS | SEEN_DOWNLOAD_TOKENS | {B2_KEY, JWT_SECRET}
    leaked = sorted(s[:10] + "..." for s in secrets if s and s in text)
    assert not leaked, f"secrets found in logs: {leaked}"


MakeSettings = Callable[..., Settings]


@pytest.fixture(scope="session")
def make_settings(database_url: str, emulator: Emulator) -> MakeSettings:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "jwt_secret": JWT_SECRET,
            "b2_application_key_id": B2_KEY_ID,
            "b2_application_key": B2_KEY,
            "b2_realm": emulator.url,
            "storage_timeout_seconds": 3,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@asynccontextmanager
async def serve(
    settings: Settings, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its real lifespan, behind an httpx client that checks every response.

    Starlette re-raises an unhandled exception after sending the 500; pass
    `raise_app_exceptions=False` to receive that 500 instead."""
    app = create_app(settings)
    IN_PROCESS_APPS["started"] += 1
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions),
            base_url="http://orbit.test",
            event_hooks={"response": [validate_response_hook]},
        ) as client,
    ):
        yield client


@pytest.fixture(scope="session")
async def client(make_settings: MakeSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_settings()) as c:
        yield c


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    org: uuid.UUID
    audience: uuid.UUID
    run: uuid.UUID

    def path(self, export_id: uuid.UUID | str, audience: Any = None, run: Any = None) -> str:
        return (
            f"/v1/intent/audiences/{audience or self.audience}"
            f"/runs/{run or self.run}/exports/{export_id}"
        )


def sample_csv(rows: int = 5) -> bytes:
    lines = ["email,company,domain,intent_score"]
    tag = uuid.uuid4().hex[:8]
    lines += [f"user{i}-{tag}@example.com,Company {i},c{i}.example,{50 + i}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


class World:
    """Creates tenants, exports, API keys and JWTs the way the platform would."""

    def __init__(self, db: AsyncEngine, b2: B2Api) -> None:
        self.db = db
        self.b2 = b2

    def tenant(self) -> Tenant:
        return Tenant(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())

    async def export(
        self,
        tenant: Tenant,
        *,
        status: str = "completed",
        content: bytes | None = None,
        file_name: str | None = None,
        **columns: Any,
    ) -> dict[str, Any]:
        export_id = uuid.uuid4()
        values: dict[str, Any] = {
            "id": export_id,
            "organization_id": tenant.org,
            "audience_id": tenant.audience,
            "run_id": tenant.run,
            "status": status,
            "requested_by": uuid.uuid4(),
        }
        if status == "completed":
            data = content if content is not None else sample_csv()
            name = (
                file_name or f"exports/{tenant.org}/{tenant.audience}/{tenant.run}/{export_id}.csv"
            )
            bucket = self.b2.get_bucket_by_name(BUCKET)
            uploaded = await asyncio.to_thread(
                bucket.upload_bytes, data, name, content_type="text/csv"
            )
            values |= {
                "bucket_name": BUCKET,
                "file_name": name,
                "file_id": uploaded.id_,
                "byte_size": len(data),
                "row_count": data.count(b"\n") - 1,
                "content_sha1": uploaded.content_sha1,
                "completed_at": datetime.now(UTC),
                "content": data,
            }
        values |= columns
        content_bytes = values.pop("content", None)
        async with self.db.begin() as conn:
            row = (
                (
                    await conn.execute(
                        insert(intent_audience_exports)
                        .values(**values)
                        .returning(intent_audience_exports)
                    )
                )
                .mappings()
                .one()
            )
        return {**row, "content": content_bytes}

    async def api_key(self, org: uuid.UUID, expires_at: datetime | None = None) -> str:
        async with self.db.begin() as conn:
            key, _ = await create_api_key(conn, org, "test", expires_at)
        SECRETS.add(key)
        return key

    def jwt(
        self,
        org: uuid.UUID | str | None,
        *,
        secret: str = JWT_SECRET,
        algorithm: str = "HS256",
        lifetime: timedelta = timedelta(minutes=5),
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = datetime.now(UTC)
        payload: dict[str, Any] = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + lifetime}
        if org is not None:
            payload["org_id"] = str(org)
        payload |= claims
        payload = {k: v for k, v in payload.items() if v is not None}
        token = jwt.encode(payload, secret, algorithm=algorithm, headers=headers)
        SECRETS.add(token)
        return token


@pytest.fixture(scope="session")
def world(db: AsyncEngine, b2: B2Api) -> World:
    return World(db, b2)


@pytest.fixture
def tenant(world: World) -> Tenant:
    return world.tenant()


async def download(url: str, **kwargs: Any) -> httpx.Response:
    """Fetch a signed URL from the emulator, as a browser or script holding it would."""
    async with httpx.AsyncClient() as plain:
        return await plain.get(url, **kwargs)


def key_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
