"""Day 365: every secret rotates without a restart, on real `orbit-exports serve` processes whose
secrets are a Kubernetes-style secret volume (SECRETS_DIR, `..data` swapped at once):

- JWT_SECRET with an overlap (JWT_PREVIOUS_SECRETS), by SIGHUP and by the swap alone: tokens
  of the old secret work during the overlap and are refused within one reload once it is
  removed, cached ones included; no failed request under load meanwhile;
- an invalid reload keeps serving with the running settings;
- B2's and S3's key pairs under load: new URLs carry the new key, nothing answers 5xx.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import pytest

from tests.fixtures.s3 import (
    ACCESS_KEY,
    REGION,
    ROTATED_ACCESS_KEY,
    ROTATED_SECRET_KEY,
    S3_BUCKET,
    SECRET_KEY,
    S3Server,
)
from tests.support.constants import JWT_SECRET
from tests.support.emulator import Emulator
from tests.support.processes import SERVER_PIDS, server_process, workers_of
from tests.support.secret_volume import SecretVolume
from tests.support.secrets import SECRETS
from tests.support.waiting import wait_until_sync
from tests.support.world import Tenant, World

FIRST = "first-jwt-secret-" + "a" * 32
SECOND = "second-jwt-secret-" + "b" * 32
RELOAD_BOUND = 2.0  # seconds: a SIGHUP reaches every worker within it


@contextmanager
def serving(
    cli_env: dict[str, str], tmp_path: Path, secrets: dict[str, str], **extra: str
) -> Iterator[tuple[str, SecretVolume]]:
    """A real server whose secrets come only from a secret volume (none in its environment)."""
    volume = SecretVolume(tmp_path / "secrets")
    volume.write(secrets)
    SECRETS.update(v for k, v in secrets.items() if not k.endswith("_KEY_ID"))
    env = {k: v for k, v in cli_env.items() if not k.startswith(("JWT_", "B2_APPLICATION_"))}
    env |= {"SECRETS_DIR": str(volume.folder), "RATE_LIMIT_PER_MINUTE": "0"} | extra
    with server_process(env, tmp_path) as url:
        yield url, volume


def sighup(url: str) -> None:
    os.kill(SERVER_PIDS[url], signal.SIGHUP)


class Load:
    """Requests in a thread for as long as it runs, every status counted by label."""

    def __init__(self, url: str, requests: list[tuple[str, str, dict[str, str]]]) -> None:
        self.url, self.requests = url, requests
        self.statuses: Counter[tuple[str, int]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                for label, path, headers in self.requests:
                    try:
                        status = client.get(path, headers=headers).status_code
                    except httpx.HTTPError:
                        status = 0
                    self.statuses[(label, status)] += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def failures(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status == 0 or status >= 500)


def status(url: str, path: str, token: str) -> int:
    return httpx.get(
        url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).status_code


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize("trigger", ["sighup", "swap"])
async def test_jwt_secret_rotates_with_an_overlap(
    cli_env: dict[str, str], world: World, tenant: Tenant, tmp_path: Path, trigger: str
) -> None:
    export = await world.export(tenant, status="processing")
    path = tenant.path(export["id"])
    old, new = world.jwt(tenant.org, secret=FIRST), world.jwt(tenant.org, secret=SECOND)
    key = await world.api_key(tenant.org)
    await asyncio.to_thread(jwt_rotation, cli_env, tmp_path, trigger, path, old, new, key)


def jwt_rotation(
    cli_env: dict[str, str], tmp_path: Path, trigger: str, path: str, old: str, new: str, key: str
) -> None:
    extra = {"SETTINGS_RELOAD_SECONDS": "1"} if trigger == "swap" else {}
    with serving(cli_env, tmp_path, {"JWT_SECRET": FIRST}, **extra) as (url, volume):
        assert status(url, path, old) == 409
        assert status(url, path, new) == 401
        load = [
            ("old", path, {"Authorization": f"Bearer {old}"}),
            ("key", path, {"X-API-Key": key}),
        ]
        with Load(url, load) as during_overlap:
            volume.write({"JWT_SECRET": SECOND, "JWT_PREVIOUS_SECRETS": FIRST})
            if trigger == "sighup":
                sighup(url)
            bound = RELOAD_BOUND if trigger == "sighup" else 1 + RELOAD_BOUND
            took = wait_until_sync(
                lambda: status(url, path, new) == 409, within=bound, what="new secret refused"
            )
            assert status(url, path, old) == 409  # the overlap
            assert metric(url, "orbit_jwt_previous_secret_total") > 0
        assert set(during_overlap.statuses) == {("old", 409), ("key", 409)}
        # The overlap ends: the old secret's tokens stop, the cached one included.
        volume.write({"JWT_SECRET": SECOND})
        if trigger == "sighup":
            sighup(url)
        wait_until_sync(
            lambda: status(url, path, old) == 401, within=bound, what="the old token still works"
        )
        assert status(url, path, new) == 409
    print(f"rotation ({trigger}): the new secret worked {took:.2f} s after the change")  # noqa: T201


async def test_sighup_reloads_every_worker_of_a_multi_worker_server(
    cli_env: dict[str, str], world: World, tenant: Tenant, tmp_path: Path
) -> None:
    """With WEB_CONCURRENCY > 1, SIGHUP reaches uvicorn's supervisor, which passes it on to the
    workers (app/cli/uvicorn_compat.py): each reloads in place, none is replaced, so a client's
    keep-alive connection survives (replacing the workers lost a request in 2,166 here)."""
    export = await world.export(tenant, status="processing")
    path = tenant.path(export["id"])
    old, new = world.jwt(tenant.org, secret=FIRST), world.jwt(tenant.org, secret=SECOND)
    await asyncio.to_thread(workers_reload, cli_env, tmp_path, path, old, new)


def workers_reload(cli_env: dict[str, str], tmp_path: Path, path: str, old: str, new: str) -> None:
    secrets = {"JWT_SECRET": FIRST}
    with serving(cli_env, tmp_path, secrets, WEB_CONCURRENCY="2") as (url, volume):
        supervisor = psutil.Process(SERVER_PIDS[url])
        workers = {w.pid for w in workers_of(supervisor)}
        log = tmp_path / "server.log"
        # Both serving, so that the time below is the reload's alone.
        wait_until_sync(
            lambda: log.read_text().count("Application startup complete") == 2,
            within=30,
            what="the workers did not start",
        )
        with Load(url, [("old", path, {"Authorization": f"Bearer {old}"})]) as load:
            volume.write({"JWT_SECRET": SECOND, "JWT_PREVIOUS_SECRETS": FIRST})
            sighup(url)
            # Each worker got the signal and reloaded (its own line; lines are written within
            # 0.1 s), not only the ones some requests happened to reach.
            took = wait_until_sync(
                lambda: log.read_text().count("settings reloaded (SIGHUP)") == 2,
                within=RELOAD_BOUND,
                what="a worker did not reload",
            )
            # A new connection each time, so that each worker gets its share.
            assert all(status(url, path, new) == 409 for _ in range(20))
        assert set(load.statuses) == {("old", 409)}, load.statuses
        assert {w.pid for w in workers_of(supervisor)} == workers
        assert passed_on(log) == workers
    print(f"rotation (2 workers): every worker had the new secret {took:.2f} s after SIGHUP")  # noqa: T201


async def test_a_sighup_reaches_a_worker_that_is_still_starting(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A worker has no SIGHUP handler until it has started, and the signal would kill it: the
    supervisor passes it on once the worker is ready."""
    await asyncio.to_thread(starting_worker_reload, cli_env, tmp_path)


def passed_on(log: Path) -> set[int]:
    """The workers the supervisor passed a SIGHUP on to, by its log."""
    return {
        int(pid) for pid in re.findall(r"Passed SIGHUP on to worker \[(\d+)\]", log.read_text())
    }


def starting_worker_reload(cli_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with serving(cli_env, tmp_path, {"JWT_SECRET": FIRST}, WEB_CONCURRENCY="2") as (url, _):
        supervisor = psutil.Process(SERVER_PIDS[url])
        count = 2
        # A new worker takes about a second to import the app; this sees it within 0.1 s and
        # the supervisor handles the SIGHUP within 0.5 s, so the worker is usually still
        # starting. Once it was, the test has what it needs; at most three tries.
        for _ in range(3):
            before = {w.pid for w in workers_of(supervisor, count)}
            os.kill(supervisor.pid, signal.SIGTTIN)
            count += 1
            (new,) = [w.pid for w in workers_of(supervisor, count) if w.pid not in before]
            os.kill(supervisor.pid, signal.SIGHUP)
            wait_until_sync(
                lambda pid=new: pid in passed_on(log),  # type: ignore[misc]
                within=20,
                what="the new worker got no SIGHUP",
            )
            if f"SIGHUP waits for worker [{new}] to finish starting" in log.read_text():
                break
        else:
            pytest.fail("each new worker had started before the SIGHUP came")
        workers = {w.pid for w in workers_of(supervisor, count)}
        assert workers <= passed_on(log)
        assert all(httpx.get(url + "/livez").status_code == 200 for _ in range(30))
    assert " died" not in log.read_text()


async def test_an_invalid_reload_keeps_serving_with_the_running_settings(
    cli_env: dict[str, str], world: World, tenant: Tenant, tmp_path: Path
) -> None:
    export = await world.export(tenant, status="processing")
    token = world.jwt(tenant.org, secret=FIRST)
    await asyncio.to_thread(invalid_reload, cli_env, tmp_path, tenant.path(export["id"]), token)


def invalid_reload(cli_env: dict[str, str], tmp_path: Path, path: str, token: str) -> None:
    with serving(cli_env, tmp_path, {"JWT_SECRET": FIRST}) as (url, volume):
        refused = metric(url, "orbit_settings_reload_refused_total")
        volume.write({"JWT_SECRET": "too-short-to-sign"})
        sighup(url)
        wait_until_sync(
            lambda: metric(url, "orbit_settings_reload_refused_total") > refused,
            within=RELOAD_BOUND,
            what="the reload was not refused",
        )
        assert status(url, path, token) == 409
        log = (tmp_path / "server.log").read_text()
    (line,) = [line for line in log.splitlines() if "reload (SIGHUP) refused" in line]
    assert "JWT_SECRET" in line and "too-short-to-sign" not in line


def download_token(answer: httpx.Response) -> str:
    url = answer.json()["data"]["downloadUrl"]
    return parse_qs(urlsplit(url).query)["Authorization"][0]


async def test_the_b2_key_rotates_under_load(
    cli_env: dict[str, str],
    world: World,
    tenant: Tenant,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    exports = [await world.export(tenant) for _ in range(3)]
    headers = {"Authorization": f"Bearer {world.jwt(tenant.org)}"}
    paths = [tenant.path(e["id"]) for e in exports]
    await asyncio.to_thread(b2_rotation, cli_env, emulator, tmp_path, paths, headers)


def b2_rotation(
    cli_env: dict[str, str],
    emulator: Emulator,
    tmp_path: Path,
    paths: list[str],
    headers: dict[str, str],
) -> None:
    first = (f"key-{uuid.uuid4().hex[:8]}", f"K{uuid.uuid4().hex}")
    second = (f"key-{uuid.uuid4().hex[:8]}", f"K{uuid.uuid4().hex}")
    for key_id, secret in (first, second):
        emulator.add_key(key_id, secret)
    secrets = {"B2_APPLICATION_KEY_ID": first[0], "B2_APPLICATION_KEY": first[1]}
    with serving(cli_env, tmp_path, secrets | {"JWT_SECRET": JWT_SECRET}) as (url, volume):
        answer = httpx.get(url + paths[0], headers=headers, timeout=10)
        assert emulator.key_behind(download_token(answer)) == first[0]
        with Load(url, [(f"export-{i}", p, headers) for i, p in enumerate(paths)]) as load:
            volume.write(
                {"B2_APPLICATION_KEY_ID": second[0], "B2_APPLICATION_KEY": second[1]}
                | {"JWT_SECRET": JWT_SECRET}
            )
            sighup(url)

            def new_key_signs() -> bool:
                answer = httpx.get(url + paths[0], headers=headers, timeout=10)
                return emulator.key_behind(download_token(answer)) == second[0]

            wait_until_sync(
                new_key_signs, within=RELOAD_BOUND, what="URLs still carried the old key"
            )
            emulator.delete_key(first[0])
            for path in paths:
                answer = httpx.get(url + path, headers=headers, timeout=10)
                assert emulator.key_behind(download_token(answer)) == second[0]
                got = httpx.get(answer.json()["data"]["downloadUrl"], timeout=10)
                assert got.status_code == 200
        assert load.failures() == 0, load.statuses
        assert {s for (_, s) in load.statuses} == {200}


async def test_the_s3_key_rotates_under_load(
    cli_env: dict[str, str], s3_server: S3Server, world: World, tenant: Tenant, tmp_path: Path
) -> None:
    name = f"exports/{uuid.uuid4()}.csv"
    await asyncio.to_thread(s3_server.put, name, b"a,b\n1,2\n")
    export = await world.export(tenant, status="completed", file_name=name)
    # The row points at the S3 bucket (the B2 upload world.export made is not used).
    await _point_at_s3(world, export["id"], name)
    headers = {"Authorization": f"Bearer {world.jwt(tenant.org)}"}
    path = tenant.path(export["id"])
    await asyncio.to_thread(s3_rotation, cli_env, s3_server, tmp_path, path, headers)


def s3_rotation(
    cli_env: dict[str, str], s3_server: S3Server, tmp_path: Path, path: str, headers: dict[str, str]
) -> None:
    def credential(answer: httpx.Response) -> str:
        query = parse_qs(urlsplit(answer.json()["data"]["downloadUrl"]).query)
        return query["X-Amz-Credential"][0].split("/", 1)[0]

    secrets = {"S3_ACCESS_KEY_ID": ACCESS_KEY, "S3_SECRET_ACCESS_KEY": SECRET_KEY}
    s3 = {
        "STORAGE_SIGNER": "s3",
        "S3_ENDPOINT_URL": s3_server.url,
        "S3_REGION": REGION,
        "S3_ADDRESSING_STYLE": "path",
    }
    with serving(cli_env, tmp_path, secrets | {"JWT_SECRET": JWT_SECRET}, **s3) as (url, volume):
        assert credential(httpx.get(url + path, headers=headers, timeout=10)) == ACCESS_KEY
        with Load(url, [("export", path, headers)]) as load:
            volume.write(
                {"S3_ACCESS_KEY_ID": ROTATED_ACCESS_KEY, "S3_SECRET_ACCESS_KEY": ROTATED_SECRET_KEY}
                | {"JWT_SECRET": JWT_SECRET}
            )
            sighup(url)
            wait_until_sync(
                lambda: (
                    credential(httpx.get(url + path, headers=headers, timeout=10))
                    == ROTATED_ACCESS_KEY
                ),
                within=RELOAD_BOUND,
                what="URLs still carried the old key",
            )
            # From then on, never the old key again (the reused URLs were dropped).
            for _ in range(20):
                answer = httpx.get(url + path, headers=headers, timeout=10)
                assert credential(answer) == ROTATED_ACCESS_KEY
            got = httpx.get(answer.json()["data"]["downloadUrl"], timeout=10)
            assert got.status_code == 200 and got.content == b"a,b\n1,2\n"
        assert load.failures() == 0, load.statuses


async def _point_at_s3(world: World, export_id: Any, name: str) -> None:
    from sqlalchemy import update

    from app.db.tables import intent_audience_exports as exports

    async with world.db.begin() as conn:
        await conn.execute(
            update(exports)
            .where(exports.c.id == export_id)
            .values(bucket_name=S3_BUCKET, file_name=name)
        )
