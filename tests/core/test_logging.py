"""One structured line per request, JSON by default, with who/what/how and never a secret."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import httpx
import pytest

from app.core.logs import ConsoleFormatter, JsonFormatter
from tests.support.app import MakeSettings, bearer, key_headers, serve
from tests.support.processes import server_process
from tests.support.world import Tenant, World


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.access"]


async def test_each_request_logs_one_structured_line(
    client: httpx.AsyncClient, world: World, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    export = await world.export(tenant)
    key = await world.api_key(tenant.org)
    caplog.set_level(logging.INFO, logger="app.access")
    first = await client.get(tenant.path(export["id"]), headers=key_headers(key))
    second = await client.get(tenant.path(export["id"]), headers=key_headers(key))
    missing = await client.get(tenant.path(uuid.uuid4()), headers=bearer(world.jwt(tenant.org)))
    records = access_lines(caplog)
    assert len(records) == 3
    fields = [r.fields for r in records]  # type: ignore[attr-defined]
    assert fields[0]["request_id"] == first.headers["X-Request-ID"]
    assert fields[0]["route"] == "/v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}"
    assert fields[0]["status"] == 200
    assert fields[0]["auth"] == "api_key"
    assert fields[0]["organization_id"] == tenant.org
    assert fields[0]["api_key_prefix"] == key[:11]
    assert fields[0]["b2"] == "minted"
    assert fields[1]["b2"] == "cached_token"
    assert fields[1]["request_id"] == second.headers["X-Request-ID"]
    assert fields[2]["status"] == 404
    assert fields[2]["auth"] == "jwt"
    assert fields[2]["error_code"] == "EXPORT_NOT_FOUND"
    assert fields[2]["request_id"] == missing.headers["X-Request-ID"]
    for record in records:
        line = JsonFormatter().format(record)
        assert key not in line
        parsed = json.loads(line)
        assert parsed["logger"] == "app.access"
        assert isinstance(parsed["duration_ms"], float)


async def test_unauthenticated_request_is_logged_with_its_error(
    client: httpx.AsyncClient, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    await client.get(tenant.path(uuid.uuid4()))
    (record,) = access_lines(caplog)
    assert record.fields["status"] == 401  # type: ignore[attr-defined]
    assert record.fields["error_code"] == "UNAUTHORIZED"  # type: ignore[attr-defined]
    assert record.fields["auth"] is None  # type: ignore[attr-defined]


def test_console_format_is_readable() -> None:
    record = logging.LogRecord("app.access", logging.INFO, __file__, 1, "GET / 200", (), None)
    record.fields = {"status": 200, "auth": None}
    line = ConsoleFormatter().format(record)
    assert line.endswith("GET / 200 status=200")


def test_json_format_carries_tracebacks() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "app.errors", logging.ERROR, __file__, 1, "x", (), sys.exc_info()
        )
    parsed = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in parsed["traceback"]
    assert parsed["level"] == "error"


async def test_every_line_logged_within_a_request_carries_its_request_id(
    make_settings: MakeSettings, world: World, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    # Without B2, a completed export logs a warning from the error handler, inside the request.
    export = await world.export(tenant)
    caplog.set_level(logging.INFO)
    async with serve(make_settings(b2_application_key_id=None, b2_application_key=None)) as c:
        caplog.clear()
        response = await c.get(
            tenant.path(export["id"]),
            headers={**bearer(world.jwt(tenant.org)), "X-Request-ID": "trace-me-123"},
        )
        assert response.status_code == 503
    during = [r for r in caplog.records if r.name in ("app.errors", "app.access")]
    assert {r.name for r in during} == {"app.errors", "app.access"}
    assert {r.request_id for r in during} == {"trace-me-123"}  # type: ignore[attr-defined]
    warning = next(r for r in during if r.name == "app.errors")
    assert json.loads(JsonFormatter().format(warning))["request_id"] == "trace-me-123"
    outside = logging.getLogger("app.test").makeRecord(
        "app.test", logging.INFO, "f", 1, "m", (), None
    )
    assert outside.request_id is None  # type: ignore[attr-defined]


async def test_a_real_server_writes_exactly_one_access_line_per_request(
    cli_env: dict[str, str], world: World, tenant: Tenant, tmp_path: Path
) -> None:
    """uvicorn's own access log stays off: `orbit-exports serve` at INFO writes the service's
    line for each request and nothing else per request."""
    export = await world.export(tenant, status="processing")
    headers = bearer(world.jwt(tenant.org))
    await asyncio.to_thread(count_lines, cli_env, tmp_path, tenant.path(export["id"]), headers)


def count_lines(env: dict[str, str], log_dir: Path, path: str, headers: dict[str, str]) -> None:
    with server_process(env, log_dir, {"LOG_LEVEL": "INFO"}) as url:
        for i in range(20):
            answer = httpx.get(url + path, headers=headers | {"X-Request-ID": f"n-{i}"})
            assert answer.status_code == 409
    lines = [json.loads(line) for line in (log_dir / "server.log").read_text().splitlines()]
    per_request = [line for line in lines if str(line.get("request_id", "")).startswith("n-")]
    assert len(per_request) == 20
    assert {line["logger"] for line in per_request} == {"app.access"}
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]


def test_batched_lines_keep_their_order_and_nothing_is_lost_at_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Lines are written in batches by a thread of their own; a traceback is carried, and
    nothing waiting is lost when the process ends."""
    from app.core.logs import _stop_writer, configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json", force=True)
        try:
            raise RuntimeError("queued boom")
        except RuntimeError:
            logging.getLogger("app.test").exception("it failed")
        for i in range(100):
            logging.getLogger("app.test").info("line %d", i)
        _stop_writer()  # what the process does at exit
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "RuntimeError: queued boom" in lines[0]["traceback"]
    assert lines[0]["message"] == "it failed"
    assert [line["message"] for line in lines[1:]] == [f"line {i}" for i in range(100)]
