"""The ways a user starts or inspects the service, as its docs say: `uvicorn app.main:app`,
`fastapi run app/main.py`, `orbit-exports serve` (settings from `.env` too), and Alembic's own
command from the checkout. Everything the service prints is JSON, uvicorn's lines included."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.constants import CLI
from tests.support.processes import free_port, server_process, wait_for_http

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], cwd: Path, out: Path) -> Iterator[None]:
    with out.open("w") as sink:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def json_lines(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]  # fails on any line that is not JSON


def test_uvicorn_serves_the_module_level_app_and_prints_only_json(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    out = tmp_path / "uvicorn.log"
    with running([str(BIN / "uvicorn"), "app.main:app", "--port", str(port)], cli_env, ROOT, out):
        wait_for_http(f"http://127.0.0.1:{port}/livez")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    records = json_lines(out)
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "app.access"} <= loggers
    assert any(r["message"] == "Application startup complete." for r in records)


def test_fastapi_run_serves_the_app(cli_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    command = [str(BIN / "fastapi"), "run", "app/main.py", "--port", str(port)]
    with running(command, cli_env, ROOT, tmp_path / "fastapi.log"):
        wait_for_http(f"http://127.0.0.1:{port}/livez", timeout=30)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200


def test_orbit_exports_serve_prints_only_json(cli_env: dict[str, str], tmp_path: Path) -> None:
    with server_process(cli_env, tmp_path) as url:
        assert httpx.get(url + "/readyz").status_code == 200
    records = json_lines(tmp_path / "server.log")
    assert any(r["logger"] == "uvicorn.error" for r in records)


def test_serve_takes_host_and_port_from_the_env_file(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    (tmp_path / ".env").write_text(f"HOST=127.0.0.1\nPORT={port}\n")
    env = {k: v for k, v in cli_env.items() if k not in ("HOST", "PORT")}
    with running([CLI, "serve"], env, tmp_path, tmp_path / "serve.log"):
        wait_for_http(f"http://127.0.0.1:{port}/livez")


def test_alembic_runs_from_the_checkout(cli_env: dict[str, str]) -> None:
    def alembic(*args: str) -> str:
        result = subprocess.run(
            [str(BIN / "alembic"), "-c", "migrations/alembic.ini", *args],
            env=cli_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    history = alembic("history")
    heads = alembic("heads").split()[0]
    assert heads in history
    assert heads in alembic("current")
    alembic("check")
