"""No API key, JWT, B2 application key or download token reaches a log line or an error body."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from app.core.logs import configure_logging
from tests.support.app import MakeSettings, bearer, key_headers, serve
from tests.support.constants import B2_KEY, JWT_SECRET
from tests.support.processes import free_port
from tests.support.secrets import KeepLines
from tests.support.world import World


@pytest.fixture
def captured() -> Iterator[KeepLines]:
    """The production log configuration at DEBUG, plus a handler that keeps every line."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    configure_logging("DEBUG", force=True)
    for kept in saved[1]:  # the suite-wide capture keeps seeing everything too
        root.addHandler(kept)
    handler = KeepLines()
    root.addHandler(handler)
    yield handler
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


async def test_no_secret_is_logged_or_echoed(
    make_settings: MakeSettings, world: World, captured: KeepLines
) -> None:
    tenant = world.tenant()
    export = await world.export(tenant)
    key = await world.api_key(tenant.org)
    token = world.jwt(tenant.org)
    expired = world.jwt(tenant.org, lifetime=timedelta(minutes=-5))
    secrets = [key, token, expired, B2_KEY, JWT_SECRET]
    bodies: list[str] = []

    async with serve(make_settings(log_level="DEBUG")) as client:
        ok = await client.get(tenant.path(export["id"]), headers=key_headers(key))
        download_token = parse_qs(urlsplit(ok.json()["data"]["downloadUrl"]).query)[
            "Authorization"
        ][0]
        for headers in (
            bearer(key),
            bearer(expired),
            bearer(token + "x"),
            {**key_headers(key), **bearer(token)},
            key_headers(key + "x"),
        ):
            response = await client.get(tenant.path(uuid.uuid4()), headers=headers)
            bodies.append(response.text)
    broken = make_settings(b2_realm=f"http://127.0.0.1:{free_port()}", storage_timeout_seconds=0.5)
    async with serve(broken) as client:
        failed = await client.get(tenant.path(export["id"]), headers=bearer(token))
        assert failed.status_code == 503
        bodies.append(failed.text)

    log = "\n".join(captured.lines)
    assert "authorized with B2" in log or "B2" in log  # the capture really saw our loggers
    for secret in [*secrets, download_token]:
        assert secret not in log
        assert secret[:-4] not in log
        for body in bodies:
            assert secret not in body
