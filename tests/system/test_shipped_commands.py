"""Each command the deployment files ship, run as they run it, with exactly the environment its
file gives it: compose's services with `.env.example` as the `.env` (and JWT_SECRET set, as its
first line asks), the Kubernetes Job and Deployment with the ConfigMap and the Secret's keys.
Only addresses are replaced (Postgres, PgBouncer, Redis, the B2 hosts and the port, which
exist only inside the stack), and the Secret's placeholders by values an operator would set."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.fixtures.database import admin
from tests.support.constants import CLI, DEV_CLI
from tests.support.processes import free_port, wait_for_http
from tests.support.secrets import LOG_FILES, SECRETS
from tests.system.test_deploy import interpolate

ROOT = Path(__file__).resolve().parents[2]
EXPORT = "/v1/intent/audiences/{a}/runs/{r}/exports/{e}"
COMMANDS = {"orbit-exports": CLI, "orbit-dev": DEV_CLI}


def env_example() -> dict[str, str]:
    """.env.example as compose reads a .env copied from it: `NAME=value` lines."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z0-9_]+=", line))


@pytest.fixture
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty database for one stack: its own migrate service or Job creates the schema."""
    name = f"orbit_shipped_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(server_url, f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def argv(command: Any) -> list[str]:
    words = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    return [COMMANDS[words[0]], *words[1:]]


def with_option(words: list[str], option: str, value: str) -> list[str]:
    """`words` with `option`'s value replaced (or the option added)."""
    if option in words:
        at = words.index(option)
        return [*words[: at + 1], value, *words[at + 2 :]]
    return [*words, option, value]


def base_environment() -> dict[str, str]:
    """What a container starts with besides its file's environment: a PATH, a HOME."""
    import os

    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}  # noqa: S108


def run_to_completion(words: list[str], env: dict[str, str], cwd: Path) -> None:
    result = subprocess.run(
        words, env=base_environment() | env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (words[1:], result.stdout[-2000:], result.stderr[-2000:])


@contextlib.contextmanager
def running(words: list[str], env: dict[str, str], cwd: Path, health: str) -> Iterator[None]:
    """A long-running command, until its health URL answers, stopped at the end."""
    log = cwd / f"{Path(words[0]).name}-{uuid.uuid4().hex[:6]}.log"
    LOG_FILES.watch(log)
    with log.open("w") as sink:
        proc = subprocess.Popen(
            words, env=base_environment() | env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        try:
            wait_for_http(health, timeout=60)
        except httpx.TransportError:
            pytest.fail(f"{words[1:]} did not start: {log.read_text()[-3000:]}")
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def assert_serves(base: str, jwt_secret: str) -> None:
    """Ready (database and storage), and the export route answers an authenticated caller."""
    ready = httpx.get(f"{base}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    token = jwt.encode(
        {"sub": "shipped", "org_id": str(uuid.uuid4()), "exp": 2_000_000_000},
        jwt_secret,
        algorithm="HS256",
    )
    SECRETS.add(token)
    ids = {k: uuid.uuid4() for k in "are"}
    answer = httpx.get(
        base + EXPORT.format(**ids), headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "EXPORT_NOT_FOUND"


def create_service_role(database: str, dotenv: dict[str, str], tmp_path: Path) -> None:
    """What the postgres image does with deploy/compose/initdb when it initialises its volume
    (roles belong to the server, so an earlier run may have made it already)."""
    url = make_url(database)
    found = subprocess.run(
        ["psql", "-tAc", "SELECT 1 FROM pg_roles WHERE rolname = 'orbit_service'"],
        env=base_environment() | libpq_environment(url),
        capture_output=True,
        text=True,
        check=True,
    )
    if found.stdout.strip():
        return
    script = ROOT / "deploy" / "compose" / "initdb" / "10-service-role.sh"
    env = libpq_environment(url) | {
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": str(url.database),
        "SERVICE_DB_PASSWORD": dotenv["SERVICE_DB_PASSWORD"],
    }
    run_to_completion(["sh", str(script)], env, tmp_path)


def libpq_environment(url: Any) -> dict[str, str]:
    host = url.query.get("host") or url.host
    return {"PGHOST": str(host), "PGPORT": str(url.port or 5432), "PGUSER": url.username or ""}


def test_the_compose_stack_runs_with_the_env_example(
    fresh_database: str, redis_url: str, tmp_path: Path
) -> None:
    dotenv = env_example() | {"JWT_SECRET": secrets.token_urlsafe(32)}
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = interpolate(raw, dotenv)["services"]
    create_service_role(fresh_database, dotenv, tmp_path)

    def database(compose_url: str) -> str:
        """The test's server and database, as the compose URL's role (the owner, `orbit`, is
        whoever owns the test's database)."""
        given = make_url(compose_url)
        assert given.host in ("postgres", "pgbouncer"), compose_url
        url = make_url(fresh_database)
        if given.username != "orbit":
            url = url.set(username=given.username, password=given.password)
        return url.render_as_string(hide_password=False)

    def environment(name: str, b2_url: str) -> dict[str, str]:
        env = {k: str(v) for k, v in services[name].get("environment", {}).items()}
        for key in ("DATABASE_URL", "DATABASE_LISTEN_URL"):
            if key in env:
                env[key] = database(env[key])
        if "REDIS_URL" in env:
            assert env["REDIS_URL"].startswith("redis://redis:")
            env["REDIS_URL"] = redis_url
        if env.get("B2_REALM") == "http://b2:9000":
            env["B2_REALM"] = b2_url
        return env

    # The quick start (`cp .env.example .env`, then `--profile dev up`) talks to the emulator,
    # with the emulator's own keys.
    b2 = argv(services["b2"]["command"])
    api = services["api"]["environment"]
    assert api["B2_REALM"] == "http://b2:9000"
    assert api["B2_APPLICATION_KEY_ID"] == b2[b2.index("--key-id") + 1]
    assert api["B2_APPLICATION_KEY"] == b2[b2.index("--key") + 1]

    b2_port = free_port()
    b2_url = f"http://127.0.0.1:{b2_port}"
    b2 = with_option(with_option(b2, "--port", str(b2_port)), "--host", "127.0.0.1")
    run_to_completion(
        argv(services["migrate"]["command"]), environment("migrate", b2_url), tmp_path
    )
    with running(b2, {}, tmp_path, f"{b2_url}/_emulator/health"):
        for name in ("api", "replica-1", "demo"):
            port = free_port()
            words = with_option(argv(services[name]["command"]), "--port", str(port))
            words = with_option(words, "--host", "127.0.0.1")
            env = environment(name, b2_url)
            with running(words, env, tmp_path, f"http://127.0.0.1:{port}/livez"):
                assert_serves(f"http://127.0.0.1:{port}", env["JWT_SECRET"])
    # The API's role reads, and only reads (granted by the migrate service).
    assert_read_only(environment("api", b2_url)["DATABASE_URL"])


def assert_read_only(url: str) -> None:
    async def check() -> None:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await connection.fetchval("SELECT count(*) FROM intent_audience_exports")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute("DELETE FROM api_keys")
        finally:
            await connection.close()

    asyncio.run(check())


def kubernetes() -> dict[str, dict[str, Any]]:
    """The manifests by `Kind/name`, and by kind alone for the kinds that come once."""
    documents = [
        yaml.safe_load(path.read_text())
        for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
        if path.name != "kustomization.yaml"
    ]
    found = {f"{d['kind']}/{d['metadata']['name']}": d for d in documents}
    for document in documents:
        found.setdefault(document["kind"], document)
    return found


def operator_secret(placeholders: dict[str, str], addresses: dict[str, str]) -> dict[str, str]:
    """The Secret as an operator creates it: real addresses, strong random secrets."""
    values = {}
    for name, placeholder in placeholders.items():
        if name in addresses:
            values[name] = addresses[name]
        else:
            assert "change-me" in placeholder, name
            values[name] = secrets.token_urlsafe(32)
    return values


def container_environment(
    pod: dict[str, Any],
    config: dict[str, str],
    secrets_by_name: dict[str, dict[str, str]],
    folder: Path,
) -> dict[str, str]:
    """What Kubernetes gives the pod's container: `envFrom` and `env`, and Secret volumes as
    files (one per key), in `folder` standing for their mount path (SECRETS_DIR)."""
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= config
        if "secretRef" in source:
            env |= secrets_by_name[source["secretRef"]["name"]]
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets_by_name[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = config[item["valueFrom"]["configMapKeyRef"]["key"]]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount["mountPath"] == "/run/secrets", mount  # SECRETS_DIR's default
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in secrets_by_name[secret["secretName"]].items():
            (folder / key).write_text(value)
        env["SECRETS_DIR"] = str(folder)
    return env


def test_the_kubernetes_job_and_deployment_run_with_what_their_manifests_give(
    fresh_database: str, redis_url: str, tmp_path: Path
) -> None:
    found = kubernetes()
    config = found["ConfigMap/orbit-exports"]["data"]
    b2_port = free_port()
    b2_url = f"http://127.0.0.1:{b2_port}"
    # The role the operator made for DB_SERVICE_ROLE (here as compose makes it).
    create_service_role(fresh_database, env_example(), tmp_path)
    as_service = make_url(fresh_database).set(username=config["DB_SERVICE_ROLE"], password=None)
    service_url = as_service.render_as_string(hide_password=False)
    secrets_by_name = {
        "orbit-exports": operator_secret(
            found["Secret/orbit-exports"]["stringData"],
            {
                "DATABASE_URL": service_url,
                "DATABASE_LISTEN_URL": service_url,
                "REDIS_URL": redis_url,
            },
        ),
        "orbit-exports-migrate": operator_secret(
            found["Secret/orbit-exports-migrate"]["stringData"], {"DATABASE_URL": fresh_database}
        ),
    }
    SECRETS.update(secrets_by_name["orbit-exports"].values())

    job = found["Job"]["spec"]["template"]["spec"]
    job_env = container_environment(job, config, secrets_by_name, tmp_path / "job-secrets")
    run_to_completion(argv(job["containers"][0]["command"]), job_env, tmp_path)
    prune = found["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    prune_env = container_environment(prune, config, secrets_by_name, tmp_path / "prune-secrets")
    run_to_completion(argv(prune["containers"][0]["command"]), prune_env, tmp_path)

    api = found["Deployment"]["spec"]["template"]["spec"]
    env = container_environment(api, config, secrets_by_name, tmp_path / "api-secrets")
    assert env["B2_REALM"] == "production"
    port = free_port()
    # B2's stand-in speaks plain http, which production refuses unless allowed on purpose.
    env |= {"B2_REALM": b2_url, "PORT": str(port), "ALLOW_PLAIN_HTTP": "true"}
    key = secrets_by_name["orbit-exports"]
    emulator = [DEV_CLI, "b2-emulator", "--port", str(b2_port), "--bucket", "orbit-exports"]
    # `--key=...`: a generated key may begin with "-", which argparse would take for an option.
    emulator += [f"--key-id={key['B2_APPLICATION_KEY_ID']}", f"--key={key['B2_APPLICATION_KEY']}"]
    command = argv(api["containers"][0]["command"])
    with (
        running(emulator, {}, tmp_path, f"{b2_url}/_emulator/health"),
        running(command, env, tmp_path, f"http://127.0.0.1:{port}/livez"),
    ):
        assert_serves(f"http://127.0.0.1:{port}", key["JWT_SECRET"])
    assert_read_only(service_url)
