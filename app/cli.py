"""`orbit-exports`: the one command operators, `make run`, the compose stack and the tests use.

Every subcommand reads the same `Settings` (environment, optional `.env`). With no
DATABASE_URL, commands that need the database start the embedded Postgres and migrate it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.config import Settings, get_settings
from app.logs import configure_logging


def _aware(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-12-31T00:00:00Z")
    return parsed.astimezone(UTC)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _ready_database_url(settings: Settings) -> str:
    """The database URL; the embedded default is also migrated, so it is always usable."""
    if settings.database_url is not None:
        # Without importing the database stack: with several workers this process only
        # supervises them, and its imports would delay their start.
        return settings.database_url.get_secret_value()
    from app.db import embedded_postgres_url, run_migrations

    pgdata = settings.orbit_data_dir.resolve() / "postgres"
    if not (pgdata / "PG_VERSION").exists():
        _progress(f"initialising the embedded Postgres in {pgdata} (first start only)...")
    else:
        _progress(f"starting the embedded Postgres in {pgdata}...")
    started = time.monotonic()
    url = embedded_postgres_url(settings.orbit_data_dir)
    run_migrations(url)
    _progress(f"Postgres ready and migrated in {time.monotonic() - started:.1f} s")
    return url


def _progress(message: str) -> None:
    print(f"orbit-exports: {message}", file=sys.stderr, flush=True)  # noqa: T201


# --- serve / migrate ---------------------------------------------------------------------


def _persistent_secret(path: Path) -> str:
    """A JWT secret for the demo, made once and kept in the data folder (mode 0600)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when `serve` dies, even by SIGKILL, so nothing is left.
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start_emulator(bucket: str, cors_origins: list[str]) -> subprocess.Popen[bytes]:
    """Run the B2 emulator beside the API and point this process's settings at it."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key_id, key = "demo-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    command = [sys.executable, "-m", "app.cli", "b2-emulator", "--port", str(port)]
    # `--key=...`: a random key may start with "-", which argparse would take for an option.
    command += [f"--key-id={key_id}", f"--key={key}", "--bucket", bucket]
    # The dashboard origins the API accepts may also download from the demo bucket.
    command += [f"--cors-origin={origin}" for origin in cors_origins]
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        command, preexec_fn=_die_with_parent if sys.platform == "linux" else None
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(f"{url}/_emulator/requests", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the B2 emulator did not start") from None
            time.sleep(0.05)
    os.environ |= {"B2_APPLICATION_KEY_ID": key_id, "B2_APPLICATION_KEY": key, "B2_REALM": url}
    _progress(f"no B2 credentials configured: B2 emulator started at {url}")
    return proc


# Read by prometheus-client when it is first imported (app/metrics.py).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _prepare_metrics_dir() -> Path | None:
    """An empty folder for this run's metric samples, shared by every worker: the operator's
    PROMETHEUS_MULTIPROC_DIR, emptied, or a new temporary one (returned, to be removed)."""
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        folder = Path(given)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return None
    folder = Path(tempfile.mkdtemp(prefix="orbit-metrics-"))
    os.environ[METRICS_DIR_ENV] = str(folder)
    return folder


# Signals uvicorn's supervisor handles itself; a forked worker must not keep its handlers.
_SUPERVISOR_SIGNALS = (
    "SIGTERM", "SIGHUP", "SIGQUIT", "SIGTTIN", "SIGTTOU", "SIGUSR1", "SIGUSR2", "SIGWINCH",
)  # fmt: skip


def _fork_workers_from_a_preloaded_app() -> None:
    """Import the app once here and have uvicorn fork its workers from this process.

    uvicorn spawns fresh interpreters by default, each importing FastAPI, SQLAlchemy and b2sdk
    again (about 1.2 s of CPU): on a 2-core machine two workers doing that at once were first
    ready 1.8-2.8 s after start, forked ones 1.1-1.5 s, and a crashed worker is replaced as
    fast. Only modules are loaded here; each worker still builds its own app, pool and B2
    client. uvicorn has no setting for this, so its start method is swapped; should a later
    uvicorn move it, workers are spawned as before, only slower (tests/test_workers.py says so).
    """
    import gc
    import multiprocessing
    import signal
    import threading

    import uvicorn._subprocess

    import app.main  # noqa: F401 - the preload itself

    if not isinstance(
        getattr(uvicorn._subprocess, "spawn", None), multiprocessing.context.BaseContext
    ):
        return
    if threading.active_count() > 1:
        # Forking a threaded process can copy a lock held mid-update; spawning is safe.
        return
    supervisor = os.getpid()

    def in_worker() -> None:
        # As a spawned worker would start: default handlers until its server installs its own.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for name in _SUPERVISOR_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        if sys.platform == "linux":
            # A supervisor killed outright takes its workers with it instead of leaving them
            # serving on its port (they drain, as on any SIGTERM).
            _die_with_parent()
            if os.getppid() != supervisor:
                os._exit(0)

    os.register_at_fork(after_in_child=in_worker)
    # What was imported is shared with the workers page by page until the collector writes
    # to it; frozen, it stays shared.
    gc.freeze()
    uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    # First: nothing may import prometheus-client before the folder is in the environment.
    metrics_dir = _prepare_metrics_dir() if settings.metrics_enabled else None
    url = _ready_database_url(settings)
    # The app factory (and any worker) reads the same URL instead of resolving it again.
    os.environ["DATABASE_URL"] = url
    emulator = None
    banner = None
    try:
        if args.demo or settings.demo:
            from app import demo

            if settings.jwt_secret is None:
                os.environ["JWT_SECRET"] = _persistent_secret(
                    settings.orbit_data_dir / "jwt-secret"
                )
            if not settings.storage_configured:
                emulator = _start_emulator(settings.demo_bucket, settings.cors_allow_origins)
            get_settings.cache_clear()
            settings = get_settings()
            data = demo.seed(settings, url, settings.demo_bucket)
            shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
            banner = demo.instructions(data, f"http://{shown_host}:{args.port}")
        get_settings.cache_clear()
        workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
        if workers > 1:
            _fork_workers_from_a_preloaded_app()
        if banner:
            print(banner, flush=True)  # noqa: T201
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=workers,
            log_level=settings.log_level.lower(),
            proxy_headers=False,
            # One structured line per request comes from the app (app.access) instead.
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    finally:
        if emulator is not None:
            emulator.terminate()
            try:
                emulator.wait(5)
            except subprocess.TimeoutExpired:
                emulator.kill()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import database_url, redact, run_migrations

    url = database_url(settings)
    run_migrations(url)
    print(f"migrated {redact(url)} to head")  # noqa: T201
    return 0


# --- api keys ----------------------------------------------------------------------------


def _in_transaction(settings: Settings, work: Any) -> Any:
    """Run `work(conn)` in one transaction on a short-lived engine."""
    from app.db import create_engine

    url = _ready_database_url(settings)

    async def run() -> Any:
        engine = create_engine(settings, url)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def cmd_api_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from app.api_keys import create_api_key

    key, record = _in_transaction(
        settings, lambda conn: create_api_key(conn, args.org, args.name, args.expires_at)
    )
    print(  # noqa: T201
        f"created API key id={record.id} prefix={record.prefix} org={record.organization_id}"
        f" expires_at={record.expires_at.isoformat() if record.expires_at else 'never'}\n"
        "the key is shown once, on the next line; store it now:"
    )
    print(key)  # noqa: T201
    return 0


def cmd_api_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.api_keys import list_api_keys

    records = _in_transaction(settings, lambda c: list_api_keys(c, args.org))
    for r in records:
        state = "revoked" if r.revoked_at else "active"
        expires = r.expires_at.isoformat() if r.expires_at else "never"
        print(f"{r.id}  {r.prefix}...  {state:7}  expires={expires}  name={r.name}")  # noqa: T201
    return 0


def cmd_api_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from app.api_keys import revoke_api_key

    record = _in_transaction(settings, lambda c: revoke_api_key(c, args.key_id))
    if record is None:
        print(f"no API key with id {args.key_id}", file=sys.stderr)  # noqa: T201
        return 1
    assert record.revoked_at is not None
    print(f"revoked {record.id} ({record.prefix}...) at {record.revoked_at.isoformat()}")  # noqa: T201
    return 0


# --- token -------------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    import jwt

    if settings.jwt_secret is None:
        print("JWT_SECRET is not set: cannot sign a token", file=sys.stderr)  # noqa: T201
        return 2
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(args.user),
        settings.jwt_org_claim: str(args.org),
        "iat": now,
        "exp": now + timedelta(seconds=args.ttl_seconds),
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    print(jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256"))  # noqa: T201
    return 0


# --- exports -----------------------------------------------------------------------------


def count_csv_rows(data: bytes) -> int:
    """Data rows of a CSV with a header line (quoted newlines count once)."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    return max(sum(1 for _ in reader) - 1, 0)


def _upload(settings: Settings, bucket_name: str, file_name: str, data: bytes) -> str:
    from b2sdk.v2 import B2Api, InMemoryAccountInfo

    api = B2Api(InMemoryAccountInfo())
    assert settings.b2_application_key_id and settings.b2_application_key
    api.authorize_account(
        settings.b2_realm,
        settings.b2_application_key_id,
        settings.b2_application_key.get_secret_value(),
    )
    uploaded = api.get_bucket_by_name(bucket_name).upload_bytes(
        data, file_name, content_type="text/csv"
    )
    return str(uploaded.id_)


def cmd_exports_add(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import insert

    from app.exports.schemas import IntentAudienceExport
    from app.tables import intent_audience_exports

    export_id = uuid.uuid4()
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": export_id,
        "organization_id": args.org,
        "audience_id": args.audience,
        "run_id": args.run,
        "status": args.status,
        "bucket_name": args.bucket,
        "expires_at": args.expires_at,
        "requested_by": args.requested_by,
    }
    if args.status == "completed":
        if args.file is None:
            print("--file is required for a completed export", file=sys.stderr)  # noqa: T201
            return 2
        if not settings.storage_configured:
            print("B2 is not configured (B2_APPLICATION_KEY_ID/KEY)", file=sys.stderr)  # noqa: T201
            return 2
        data = Path(args.file).read_bytes()
        file_name = f"exports/{args.org}/{args.audience}/{args.run}/{export_id}.csv"
        values |= {
            "file_name": file_name,
            "file_id": _upload(settings, args.bucket, file_name, data),
            "byte_size": len(data),
            "row_count": count_csv_rows(data),
            "content_sha1": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
            "completed_at": now,
        }
    elif args.status == "failed":
        values |= {"error_code": args.error_code, "error_message": args.error_message}

    async def insert_row(conn: Any) -> Any:
        result = await conn.execute(
            insert(intent_audience_exports).values(**values).returning(intent_audience_exports)
        )
        return result.mappings().one()

    row = _in_transaction(settings, insert_row)
    export = IntentAudienceExport.model_validate(dict(row))
    print(export.model_dump_json(by_alias=True))  # noqa: T201
    return 0


# --- emulator ----------------------------------------------------------------------------


def cmd_b2_emulator(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.b2_emulator import create_emulator

    app = create_emulator(args.key_id, args.key, args.bucket, args.public_url, args.cors_origin)
    # Explicit: uvicorn would read WEB_CONCURRENCY, meant for the API, and refuse to start.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1)
    return 0


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbit-exports", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve.add_argument(
        "--demo",
        action="store_true",
        help="seed demo data and print ready-to-paste requests (also DEMO=true); "
        "without B2 credentials, run the B2 emulator beside the API",
    )
    serve.set_defaults(handler=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(handler=cmd_migrate)

    keys = sub.add_parser("api-keys", help="manage organization API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once, on the last line)")
    create.add_argument("--org", type=_uuid, required=True)
    create.add_argument("--name", default="default")
    create.add_argument("--expires-at", type=_aware)
    create.set_defaults(handler=cmd_api_keys_create)
    listing = keys_sub.add_parser("list", help="list an organization's keys")
    listing.add_argument("--org", type=_uuid, required=True)
    listing.set_defaults(handler=cmd_api_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=_uuid)
    revoke.set_defaults(handler=cmd_api_keys_revoke)

    token = sub.add_parser("token", help="print an HS256 dashboard JWT (development, tests)")
    token.add_argument("--org", type=_uuid, required=True)
    token.add_argument("--user", type=_uuid, required=True)
    token.add_argument("--ttl-seconds", type=int, default=3600)
    token.set_defaults(handler=cmd_token)

    exports = sub.add_parser("exports", help="manage stored exports (development, tests)")
    exports_sub = exports.add_subparsers(dest="action", required=True)
    add = exports_sub.add_parser("add", help="upload a CSV and insert its export row")
    add.add_argument("--org", type=_uuid, required=True)
    add.add_argument("--audience", type=_uuid, required=True)
    add.add_argument("--run", type=_uuid, required=True)
    add.add_argument("--bucket", required=True)
    add.add_argument("--file")
    add.add_argument("--status", choices=["completed", "processing", "failed"], default="completed")
    add.add_argument("--expires-at", type=_aware)
    add.add_argument("--requested-by", type=_uuid)
    add.add_argument("--error-code", default="EXPORT_GENERATION_FAILED")
    add.add_argument("--error-message", default="The export could not be generated.")
    add.set_defaults(handler=cmd_exports_add)

    emu = sub.add_parser("b2-emulator", help="run the B2 emulator (development, tests)")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, required=True)
    emu.add_argument("--key-id", required=True)
    emu.add_argument("--key", required=True)
    emu.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    emu.add_argument(
        "--public-url", help="download base URL given to clients (default: as reached)"
    )
    emu.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="browser origin the buckets' CORS rule lets download files (repeatable)",
    )
    emu.set_defaults(handler=cmd_b2_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log_level, settings.log_format)
    result: int = args.handler(args, settings)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
