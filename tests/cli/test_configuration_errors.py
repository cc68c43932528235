"""A bad setting that carries a secret ends every command with exit code 2 and one line naming
the setting and its rule; no 8-character piece of the secret reaches stdout or stderr (both
land in container logs). pydantic's own message would quote the value."""

from __future__ import annotations

import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.constants import CLI, DEV_CLI

BIN = Path(sys.executable).parent
ORG = str(uuid.uuid4())

# setting -> (value, the secret inside it, the extra environment that makes it invalid)
BAD_SECRETS: dict[str, tuple[str, str, dict[str, str]]] = {
    "DATABASE_URL": (
        "mysql://admin:Db-Passw0rd-7f3a9c1e@db.example/orbit",
        "Db-Passw0rd-7f3a9c1e",
        {},
    ),
    "DATABASE_LISTEN_URL": (
        "mysql://admin:Listen-Passw0rd-51d2e8@db.example/orbit",
        "Listen-Passw0rd-51d2e8",
        {},
    ),
    # Too short.
    "JWT_SECRET": ("jwt-secret-0a1b2c3d4e", "jwt-secret-0a1b2c3d4e", {}),
    # Without B2_APPLICATION_KEY_ID.
    "B2_APPLICATION_KEY": (
        "K005-b2-application-key-9e8d7c6b5a",
        "K005-b2-application-key-9e8d7c6b5a",
        {"B2_APPLICATION_KEY_ID": ""},
    ),
    # Shorter than 16.
    "METRICS_TOKEN": ("metrics-7d6c5b", "metrics-7d6c5b", {}),
    "REDIS_URL": (
        "http://:Redis-Passw0rd-c4b3a2@cache.example:6379/0",
        "Redis-Passw0rd-c4b3a2",
        {},
    ),
}

COMMANDS: dict[str, list[str]] = {
    "serve": [CLI, "serve"],
    "migrate": [CLI, "migrate"],
    "api-keys create": [CLI, "api-keys", "create", "--org", ORG],
    "api-keys list": [CLI, "api-keys", "list", "--org", ORG],
    "api-keys revoke": [CLI, "api-keys", "revoke", str(uuid.uuid4())],
    "orbit-dev token": [DEV_CLI, "token", "--org", ORG, "--user", ORG],
    "orbit-dev exports add": [
        DEV_CLI,
        "exports",
        "add",
        "--org",
        ORG,
        "--audience",
        ORG,
        "--run",
        ORG,
        "--bucket",
        "b",
    ],
    "uvicorn app.main:app": [str(BIN / "uvicorn"), "app.main:app", "--port", "1"],
}


def pieces(secret: str) -> set[str]:
    return {secret[i : i + 8] for i in range(len(secret) - 7)}


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("setting", sorted(BAD_SECRETS))
def test_a_bad_secret_setting_is_one_line_exit_2_and_never_printed(
    setting: str, cli_env: dict[str, str]
) -> None:
    value, secret, extra = BAD_SECRETS[setting]
    env = {k: v for k, v in (cli_env | {setting: value} | extra).items() if v}
    with ThreadPoolExecutor(len(COMMANDS)) as pool:
        results = dict(
            zip(COMMANDS, pool.map(lambda c: run(c, env), COMMANDS.values()), strict=True)
        )
    for name, result in results.items():
        output = result.stdout + result.stderr
        assert result.returncode == 2, (name, result.returncode, output[-500:])
        leaked = [piece for piece in pieces(secret) if piece in output]
        assert not leaked, (name, leaked)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (name, lines)
        assert lines[0].startswith("configuration error:") and setting in lines[0], (name, lines)
