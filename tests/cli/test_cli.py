"""The `orbit-exports` console script (and the developer tools' `orbit-dev`), run as real
processes against the test database and the emulator, as operators and other tools use them."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy.engine import make_url

from tests.support.app import bearer, key_headers
from tests.support.constants import BUCKET, CLI, DEV_CLI, JWT_SECRET
from tests.support.contract import assert_matches_contract
from tests.support.world import sample_csv

DEV_COMMANDS = {"run", "token", "exports", "b2-emulator"}


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = DEV_CLI if args[0] in DEV_COMMANDS else CLI
    result = subprocess.run(
        [command, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def server(live_server: str) -> str:
    return live_server


def get(server: str, path: str, headers: dict[str, str]) -> httpx.Response:
    response = httpx.get(server + path, headers=headers)
    assert_matches_contract(response)
    return response


def add_export(env: dict[str, str], ids: dict[str, str], *extra: str) -> dict[str, Any]:
    result = run(
        env,
        "exports",
        "add",
        "--org",
        ids["org"],
        "--audience",
        ids["audience"],
        "--run",
        ids["run"],
        "--bucket",
        BUCKET,
        *extra,
    )
    row: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return row


@pytest.fixture
def ids() -> dict[str, str]:
    return {name: str(uuid.uuid4()) for name in ("org", "audience", "run", "user")}


def path(ids: dict[str, str], export_id: str) -> str:
    return f"/v1/intent/audiences/{ids['audience']}/runs/{ids['run']}/exports/{export_id}"


def test_exports_add_then_serve_returns_a_url_that_downloads_the_file(
    cli_env: dict[str, str], server: str, ids: dict[str, str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "audience.csv"
    content = sample_csv(rows=7) + b'"quoted\nnewline",x,y,1\n'
    csv_file.write_bytes(content)
    row = add_export(cli_env, ids, "--file", str(csv_file))
    assert row["status"] == "completed"
    assert row["byteSize"] == len(content)
    assert row["rowCount"] == 8
    assert row["organizationId"] == ids["org"]
    assert row["contentSha1"] == hashlib.sha1(content, usedforsecurity=False).hexdigest()

    key = run(cli_env, "api-keys", "create", "--org", ids["org"], "--name", "ci").stdout
    key = key.strip().splitlines()[-1]
    assert key.startswith("sk_")
    response = get(server, path(ids, row["id"]), key_headers(key))
    assert response.status_code == 200
    assert httpx.get(response.json()["data"]["downloadUrl"]).content == content


def test_exports_add_refuses_a_file_name_overlapping_another_exports(
    cli_env: dict[str, str], ids: dict[str, str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "a.csv"
    csv_file.write_bytes(sample_csv(rows=2))
    name = f"exports/{uuid.uuid4()}/report.csv"
    add_export(cli_env, ids, "--file", str(csv_file), "--file-name", name)
    other = {**ids, "org": str(uuid.uuid4())}
    for refused in (name + ".bak", name[:-4], "exports/", ""):
        result = run(
            cli_env,
            "exports", "add", "--org", other["org"], "--audience", other["audience"],
            "--run", other["run"], "--bucket", BUCKET, "--file", str(csv_file),
            "--file-name", refused,
            check=False,
        )  # fmt: skip
        assert result.returncode == 2, (refused, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and ("overlaps" in lines[0] or "one file" in lines[0]), lines


def test_exports_add_processing_and_failed(
    cli_env: dict[str, str], server: str, ids: dict[str, str]
) -> None:
    processing = add_export(cli_env, ids, "--status", "processing")
    failed = add_export(cli_env, ids, "--status", "failed", "--error-code", "TOO_BIG")
    assert processing["fileName"] is None and failed["errorCode"] == "TOO_BIG"
    token = run(cli_env, "token", "--org", ids["org"], "--user", ids["user"]).stdout.strip()
    assert get(server, path(ids, processing["id"]), bearer(token)).status_code == 409
    failed_response = get(server, path(ids, failed["id"]), bearer(token))
    assert failed_response.json()["error"]["details"]["errorCode"] == "TOO_BIG"


def test_token_is_an_hs256_jwt_with_the_given_claims(
    cli_env: dict[str, str], ids: dict[str, str]
) -> None:
    token = run(
        cli_env, "token", "--org", ids["org"], "--user", ids["user"], "--ttl-seconds", "90"
    ).stdout.strip()
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == ids["user"]
    assert claims["org_id"] == ids["org"]
    assert claims["exp"] - claims["iat"] == 90


def test_api_keys_list_and_revoke(
    cli_env: dict[str, str], server: str, ids: dict[str, str]
) -> None:
    created = run(cli_env, "api-keys", "create", "--org", ids["org"], "--name", "ops").stdout
    key = created.strip().splitlines()[-1]
    key_id = created.split("id=")[1].split()[0]
    listing = run(cli_env, "api-keys", "list", "--org", ids["org"]).stdout
    assert key_id in listing and "active" in listing and "ops" in listing
    assert key not in listing
    assert get(server, path(ids, str(uuid.uuid4())), key_headers(key)).status_code == 404

    revoked = run(cli_env, "api-keys", "revoke", key_id).stdout
    assert "revoked" in revoked and key not in revoked
    assert "revoked" in run(cli_env, "api-keys", "list", "--org", ids["org"]).stdout
    assert get(server, path(ids, str(uuid.uuid4())), key_headers(key)).status_code == 401


def test_api_key_with_expiry(cli_env: dict[str, str], ids: dict[str, str]) -> None:
    created = run(
        cli_env, "api-keys", "create", "--org", ids["org"], "--expires-at", "2030-01-01T00:00:00Z"
    ).stdout
    assert "expires_at=2030-01-01T00:00:00+00:00" in created


@pytest.mark.parametrize(
    "args",
    [
        ["api-keys", "create", "--org", "not-a-uuid"],
        ["api-keys", "create", "--org", str(uuid.uuid4()), "--expires-at", "2030-01-01"],
        ["api-keys", "revoke", "not-a-uuid"],
        [
            "exports",
            "add",
            "--org",
            str(uuid.uuid4()),
            "--audience",
            str(uuid.uuid4()),
            "--run",
            str(uuid.uuid4()),
            "--bucket",
            BUCKET,
        ],
    ],
)
def test_bad_cli_input_is_a_clear_error(cli_env: dict[str, str], args: list[str]) -> None:
    result = run(cli_env, *args, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()


def test_revoking_an_unknown_key_fails(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "api-keys", "revoke", str(uuid.uuid4()), check=False)
    assert result.returncode == 1
    assert "no API key" in result.stderr


def test_token_without_jwt_secret_is_a_clear_error(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "JWT_SECRET"}
    result = run(env, "token", "--org", str(uuid.uuid4()), "--user", str(uuid.uuid4()), check=False)
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr


def test_bad_configuration_is_a_clear_error(cli_env: dict[str, str]) -> None:
    env = cli_env | {"EXPORT_URL_TTL_SECONDS": "5"}
    result = run(env, "migrate", check=False)
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert "EXPORT_URL_TTL_SECONDS" in result.stderr


def test_migrate_is_idempotent_and_hides_the_password(cli_env: dict[str, str]) -> None:
    # Both test servers use trust auth, so any password connects; it must not be printed.
    url = make_url(cli_env["DATABASE_URL"]).set(password="hunter2-db-password")
    env = cli_env | {"DATABASE_URL": url.render_as_string(hide_password=False)}
    first = run(env, "migrate")
    assert "migrated" in first.stdout
    assert "hunter2-db-password" not in first.stdout + first.stderr
    run(env, "migrate")


def test_embedded_postgres_is_the_default(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "DATABASE_URL"}
    env["ORBIT_DATA_DIR"] = str(tmp_path / "data")
    org = str(uuid.uuid4())
    run(env, "api-keys", "create", "--org", org)
    listing = run(env, "api-keys", "list", "--org", org).stdout
    assert "active" in listing
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()


def test_the_service_command_has_no_developer_tools(cli_env: dict[str, str]) -> None:
    usage = run(cli_env, "--help").stdout
    assert "serve" in usage and "api-keys" in usage
    assert not DEV_COMMANDS & set(usage.split("{", 1)[1].split("}", 1)[0].split(","))


def test_production_without_database_url_refuses_to_start(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "DATABASE_URL"} | {"ENVIRONMENT": "production"}
    for command in (["serve"], ["migrate"], ["api-keys", "list", "--org", str(uuid.uuid4())]):
        result = run(env, *command, check=False)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "DATABASE_URL" in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def _all_options(
    parser: argparse.ArgumentParser, path: str = ""
) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:  # argparse offers no public walk over its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _all_options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((path, action))
    return found


def test_every_option_of_every_command_has_help_text() -> None:
    from orbit_dev.cli import build_parser as build_dev_parser

    from app.cli import build_parser

    for build in (build_parser, build_dev_parser):
        options = _all_options(build())
        assert options
        missing = [f"{path} {action.dest}" for path, action in options if not action.help]
        assert not missing
