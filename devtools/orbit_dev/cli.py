"""`orbit-dev`: tools for developers and tests, not part of the service's install or image.

- `run`: the demo behind `make run`: embedded Postgres, the B2 emulator when no B2 credentials
  are set, seeded data, ready-to-paste requests, then the API itself.
- `cluster`: the fleet as local processes (`make cluster`): Postgres, PgBouncer, Redis, three
  replicas, HAProxy.
- `b2-emulator`: the B2 native-API emulator on its own.
- `token`: an HS256 dashboard JWT signed with JWT_SECRET.
- `exports add`: upload a CSV to B2 and register its export row.
- `drill`: the weekly operations drills under load (`make drill`).
- `openapi`: the service's OpenAPI document (`make openapi` writes `contract/openapi.json`,
  `make lint` checks it is current).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.cli.common import (
    aware_datetime,
    in_transaction,
    ready_database_url,
    run_command,
    uuid_argument,
)
from app.core.local_secrets import persistent_secret
from app.core.settings import Settings, get_settings
from orbit_dev.children import keep_free, start_emulator, start_seaweedfs
from orbit_dev.uploads import upload

# --- run (the demo) --------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.serve import run_server
    from orbit_dev import demo

    os.environ["DATABASE_URL"] = ready_database_url(settings)
    if settings.jwt_secret is None:
        os.environ["JWT_SECRET"] = persistent_secret(settings.orbit_data_dir / "jwt-secret")
    host, port = args.host or settings.host, args.port or settings.port
    keep_free(port)
    emulator = None
    try:
        if args.signer == "s3":
            emulator = start_seaweedfs(args.bucket, settings.orbit_data_dir)
        elif not settings.storage_configured:
            emulator = start_emulator(args.bucket, settings.cors_allow_origins)
        get_settings.cache_clear()
        settings = get_settings()
        data = demo.seed(settings, args.bucket)
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        print(demo.instructions(data, f"http://{shown_host}:{port}"), flush=True)  # noqa: T201
        run_server(settings, host, port)
    finally:
        if emulator is not None:
            emulator.terminate()
            try:
                emulator.wait(5)
            except subprocess.TimeoutExpired:
                emulator.kill()
    return 0


# --- b2-emulator -----------------------------------------------------------------------------


def cmd_b2_emulator(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from orbit_dev.b2_emulator import create_emulator

    app = create_emulator(args.key_id, args.key, args.bucket, args.public_url, args.cors_origin)
    # Explicit: uvicorn would read WEB_CONCURRENCY, meant for the API, and refuse to start.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1)
    return 0


# --- token -----------------------------------------------------------------------------------


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


# --- exports add -----------------------------------------------------------------------------


def count_csv_rows(data: bytes) -> int:
    """Data rows of a CSV with a header line (quoted newlines count once)."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    return max(sum(1 for _ in reader) - 1, 0)


def cmd_exports_add(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from app.db.tables import intent_audience_exports
    from app.exports.schemas import IntentAudienceExport
    from app.storage.signer import names_one_file

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
        file_name = args.file_name
        if file_name is None:
            file_name = f"exports/{args.org}/{args.audience}/{args.run}/{export_id}.csv"
        if not names_one_file(file_name):
            print(  # noqa: T201
                "--file-name must name one file: not empty, no trailing /, no . or .. segments",
                file=sys.stderr,
            )
            return 2
        values |= {
            "file_name": file_name,
            "file_id": upload(settings, args.bucket, file_name, data),
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

    try:
        row = in_transaction(settings, insert_row)
    except IntegrityError as exc:
        # The table's rules for file names (migration 0004): say which, in one line.
        cause = getattr(exc.orig, "__cause__", None) or exc.orig
        constraint = getattr(cause, "constraint_name", None) or "a constraint"
        print(f"refused by {constraint}: {str(cause).splitlines()[0]}", file=sys.stderr)  # noqa: T201
        return 2
    export = IntentAudienceExport.model_validate(dict(row))
    print(export.model_dump_json(by_alias=True))  # noqa: T201
    return 0


# --- openapi ---------------------------------------------------------------------------------


def openapi_document() -> str:
    """The service's /openapi.json as committed: built from the code alone (the document does
    not depend on any setting), indented, one trailing newline."""
    import json

    from app.main import create_app

    document = create_app(Settings(_env_file=None)).openapi()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def cmd_openapi(args: argparse.Namespace, settings: Settings) -> int:
    document = openapi_document()
    if args.check is not None:
        if args.check.read_text() != document:
            print(  # noqa: T201
                f"{args.check} is not the service's current OpenAPI document: run `make openapi`",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.output is not None:
        args.output.write_text(document)
    else:
        sys.stdout.write(document)
    return 0


# --- parser ----------------------------------------------------------------------------------


def _cluster(args: argparse.Namespace, settings: Settings) -> int:
    from orbit_dev.cluster import cmd_cluster

    return cmd_cluster(args, settings)


def _drill(args: argparse.Namespace, settings: Settings) -> int:
    from orbit_dev.drill import cmd_drill

    return cmd_drill(args, settings)


def _otlp_sink(args: argparse.Namespace, settings: Settings) -> int:
    from orbit_dev.otlp import serve_sink

    return serve_sink(args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbit-dev", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the demo: seeded data, printed requests, then the API")
    run.add_argument("--host", help="address to listen on (default: HOST, or 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to listen on (default: PORT, or 8000)")
    run.add_argument(
        "--bucket",
        default=os.environ.get("DEMO_BUCKET", "orbit-exports"),
        help="B2 bucket of the demo export (default: DEMO_BUCKET, or orbit-exports)",
    )
    run.add_argument(
        "--signer",
        choices=["b2-native", "s3"],
        default="b2-native",
        help="b2-native: the B2 emulator (default); s3: STORAGE_SIGNER=s3 against a local"
        " SeaweedFS (needs `weed`, from the dev install)",
    )
    run.set_defaults(handler=cmd_run)

    token = sub.add_parser("token", help="print an HS256 dashboard JWT signed with JWT_SECRET")
    token.add_argument(
        "--org", type=uuid_argument, required=True, help="organization UUID (org claim)"
    )
    token.add_argument(
        "--user", type=uuid_argument, required=True, help="user UUID (the sub claim)"
    )
    token.add_argument("--ttl-seconds", type=int, default=3600, help="lifetime (default 3600)")
    token.set_defaults(handler=cmd_token)

    exports = sub.add_parser("exports", help="register stored exports for tests and demos")
    exports_sub = exports.add_subparsers(dest="action", required=True)
    add = exports_sub.add_parser("add", help="upload a CSV to B2 and insert its export row")
    add.add_argument("--org", type=uuid_argument, required=True, help="organization UUID")
    add.add_argument("--audience", type=uuid_argument, required=True, help="audience UUID")
    add.add_argument("--run", type=uuid_argument, required=True, help="audience run UUID")
    add.add_argument("--bucket", required=True, help="B2 bucket to upload the file to")
    add.add_argument("--file", help="the CSV to upload (required for a completed export)")
    add.add_argument(
        "--file-name",
        help="the object's name in the bucket (default: exports/<org>/<audience>/<run>/<id>.csv);"
        " it may not begin, or be the beginning of, another export's file name",
    )
    add.add_argument(
        "--status",
        choices=["completed", "processing", "failed"],
        default="completed",
        help="the export's status (default: completed)",
    )
    add.add_argument(
        "--expires-at", type=aware_datetime, help="ISO 8601 time with a zone; default: never"
    )
    add.add_argument("--requested-by", type=uuid_argument, help="UUID of the user who asked for it")
    add.add_argument(
        "--error-code",
        default="EXPORT_GENERATION_FAILED",
        help="errorCode of a failed export",
    )
    add.add_argument(
        "--error-message",
        default="The export could not be generated.",
        help="errorMessage of a failed export",
    )
    add.set_defaults(handler=cmd_exports_add)

    cluster = sub.add_parser(
        "cluster", help="Postgres, PgBouncer, Redis, 3 replicas and HAProxy as local processes"
    )
    cluster.add_argument("--port", type=int, help="HAProxy's port (default: PORT, or 8000)")
    cluster.add_argument(
        "--bucket",
        default=os.environ.get("DEMO_BUCKET", "orbit-exports"),
        help="B2 bucket of the demo export (default: DEMO_BUCKET, or orbit-exports)",
    )
    cluster.add_argument(
        "--smoke",
        action="store_true",
        help="send the printed requests through HAProxy once, then stop (exit 1 unless all 200)",
    )
    cluster.set_defaults(handler=_cluster)

    drill = sub.add_parser(
        "drill",
        help="restarts, failovers and silent network faults under load on the cluster topology",
    )
    drill.add_argument(
        "--smoke", action="store_true", help="short drills and a light load: do they still run"
    )
    drill.add_argument("--rate", type=float, help="requests a second (default 100; smoke 30)")
    drill.add_argument(
        "--bucket",
        default=os.environ.get("DEMO_BUCKET", "orbit-exports"),
        help="B2 bucket of the demo export (default: DEMO_BUCKET, or orbit-exports)",
    )
    drill.set_defaults(handler=_drill)

    openapi = sub.add_parser("openapi", help="print the service's OpenAPI document")
    target = openapi.add_mutually_exclusive_group()
    target.add_argument("--output", type=Path, help="write it to this file instead")
    target.add_argument(
        "--check", type=Path, help="exit 1 unless this file holds exactly the current document"
    )
    openapi.set_defaults(handler=cmd_openapi)

    sink = sub.add_parser(
        "otlp-sink", help="an OTLP/HTTP trace receiver that answers and discards (make bench)"
    )
    sink.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    sink.set_defaults(handler=_otlp_sink)

    emu = sub.add_parser("b2-emulator", help="run the B2 native-API emulator")
    emu.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emu.add_argument("--port", type=int, required=True, help="port to listen on")
    emu.add_argument("--key-id", required=True, help="the application key id it accepts")
    emu.add_argument("--key", required=True, help="the application key it accepts")
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
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
