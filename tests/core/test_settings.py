"""Settings: accepted forms, bounds, and refusal to start with unsafe values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.settings import ConfigurationError, Settings, describe_invalid_settings


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def serving(**values: Any) -> Settings:
    """Settings the API can serve with (what `serve` and `create_app` check)."""
    settings = make(**values)
    settings.check_serving()
    return settings


@pytest.mark.parametrize(
    "url", ["postgresql://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d", "postgres://u:p@h/d"]
)
def test_database_url_accepts_both_schemes(url: str) -> None:
    settings = make(database_url=url)
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().startswith("postgresql+asyncpg://")


def test_database_url_rejects_other_schemes() -> None:
    with pytest.raises(ValidationError):
        make(database_url="mysql://u@h/d")


@pytest.mark.parametrize("ttl", [59, 604_801, 0, -1])
def test_ttl_outside_60_to_604800_is_refused(ttl: int) -> None:
    with pytest.raises(ValidationError):
        make(export_url_ttl_seconds=ttl)


@pytest.mark.parametrize("ttl", [60, 3600, 604_800])
def test_ttl_bounds_are_inclusive(ttl: int) -> None:
    assert make(export_url_ttl_seconds=ttl).export_url_ttl_seconds == ttl


def test_algorithms_parse_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_ALGORITHMS", "HS256, RS256")
    monkeypatch.setenv("JWT_JWKS_URL", "http://127.0.0.1:1/jwks")
    assert make().jwt_algorithms == ["HS256", "RS256"]


@pytest.mark.parametrize("algs", ["none", "HS256,none", ",", "RS1"])
def test_unknown_or_empty_algorithms_are_refused(
    monkeypatch: pytest.MonkeyPatch, algs: str
) -> None:
    monkeypatch.setenv("JWT_ALGORITHMS", algs)
    with pytest.raises(ValidationError):
        make()


def test_asymmetric_algorithms_need_a_jwks_url() -> None:
    with pytest.raises(ConfigurationError, match="JWT_JWKS_URL"):
        serving(jwt_algorithms=["RS256"])


def test_short_jwt_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        make(jwt_secret="short")


def test_placeholder_secret_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        make(
            environment="production",
            database_url="postgresql://db/orbit",
            metrics_token="m" * 24,
            jwt_secret="changethis" * 4,
        )


def test_production_needs_a_database_url() -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL is required"):
        make(environment="production")
    production = make(
        environment="production",
        database_url="postgresql://db/orbit",
        metrics_token="m" * 24,
    )
    assert production.port == 8000


def test_production_metrics_need_a_token_to_serve() -> None:
    production = {"environment": "production", "database_url": "postgresql://db/orbit"}
    with pytest.raises(ConfigurationError, match="METRICS_TOKEN is required"):
        serving(**production)
    assert serving(**production, metrics_enabled=False).metrics_token is None
    assert serving(**production, metrics_token="m" * 24).metrics_enabled


def test_commands_that_never_serve_need_no_serving_settings() -> None:
    """A migration Job gets DATABASE_URL and the shared configuration, never METRICS_TOKEN."""
    settings = make(environment="production", database_url="postgresql://db/orbit")
    assert settings.metrics_enabled and settings.metrics_token is None


def test_host_port_and_workers_come_from_the_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HOST", "PORT", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("HOST=127.0.0.2\nPORT=9000\nWEB_CONCURRENCY=3\n")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert (settings.host, settings.port, settings.web_concurrency) == ("127.0.0.2", 9000, 3)


def test_secrets_are_read_from_a_secrets_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    (tmp_path / "jwt_secret").write_text("a-container-secret-0123456789abcdef")
    settings = Settings(_env_file=None, _secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "a-container-secret-0123456789abcdef"


def test_half_configured_b2_is_refused() -> None:
    with pytest.raises(ValidationError, match="B2_APPLICATION_KEY"):
        make(b2_application_key_id="id-only")


def test_secrets_do_not_appear_in_repr() -> None:
    settings = make(
        jwt_secret="s" * 40, b2_application_key_id="kid", b2_application_key="b2-secret-value"
    )
    assert "s" * 40 not in repr(settings)
    assert "b2-secret-value" not in repr(settings)


def test_empty_environment_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_ALGORITHMS", "")
    monkeypatch.setenv("JWT_JWKS_URL", "")
    monkeypatch.setenv("DATABASE_URL", "")
    settings = make()
    assert settings.jwt_algorithms == ["HS256"]
    assert settings.jwt_jwks_url is None
    assert settings.database_url is None


def test_a_jwks_in_production_needs_issuer_and_audience() -> None:
    production = {
        "environment": "production",
        "database_url": "postgresql://db/orbit",
        "jwt_algorithms": ["RS256"],
        "jwt_jwks_url": "https://idp.example/.well-known/jwks.json",
        "metrics_token": "m" * 24,
    }
    for missing in ({}, {"jwt_issuer": "https://idp.example/"}, {"jwt_audience": "orbit"}):
        with pytest.raises(ConfigurationError, match="JWT_ISSUER and JWT_AUDIENCE are required"):
            serving(**production, **missing)
    both = serving(**production, jwt_issuer="https://idp.example/", jwt_audience="orbit")
    assert both.jwt_audience == "orbit"
    # Development keeps the convenience of a JWKS alone.
    assert serving(**(production | {"environment": "development"})).jwt_issuer is None


def test_the_s3_signer_needs_an_endpoint_a_region_and_credentials() -> None:
    secret = "s3-secret-9f8e7d6c5b4a"
    complete = {
        "storage_signer": "s3",
        "s3_endpoint_url": "https://s3.us-west-004.backblazeb2.com",
        "s3_region": "us-west-004",
        "s3_access_key_id": "004abc",
        "s3_secret_access_key": secret,
    }
    assert serving(**complete).s3_credentials == ("004abc", secret)
    for missing, named in (
        ("s3_endpoint_url", "S3_ENDPOINT_URL"),
        ("s3_region", "S3_REGION"),
        ("s3_access_key_id", "S3_ACCESS_KEY_ID"),
        ("s3_secret_access_key", "S3_SECRET_ACCESS_KEY"),
    ):
        with pytest.raises(ConfigurationError, match=named) as refused:
            serving(**{k: v for k, v in complete.items() if k != missing})
        assert secret not in str(refused.value)
    with pytest.raises(ConfigurationError, match="S3_ENDPOINT_URL"):
        serving(**(complete | {"s3_endpoint_url": "s3.example.com"}))
    # B2's application key is the default S3 credential.
    b2_key = {"b2_application_key_id": "004b2", "b2_application_key": "K004b2secret"}
    fallback = {k: v for k, v in complete.items() if not k.startswith("s3_access")}
    fallback.pop("s3_secret_access_key")
    assert serving(**fallback, **b2_key).s3_credentials == ("004b2", "K004b2secret")


@pytest.mark.parametrize("threshold", [0, 99, 10_000_001])
def test_a_gc_threshold_outside_its_bounds_is_refused(threshold: int) -> None:
    """0 would switch the collector off, and cyclic garbage would never be freed."""
    with pytest.raises(ValidationError) as refused:
        make(gc_gen0_threshold=threshold)
    assert "GC_GEN0_THRESHOLD" in describe_invalid_settings(refused.value)


PRODUCTION = {
    "environment": "production",
    "database_url": "postgresql://orbit:Zq9Zq9Zq9@db/orbit",
    "metrics_token": "m" * 24,
}


@pytest.mark.parametrize(
    ("setting", "placeholder"),
    [
        ("jwt_secret", "change-me-to-at-least-32-random-characters"),
        ("shared_state_secret", "replace-me-with-32-random-characters-please"),
        ("metrics_token", "change-me-16-chars-or-more"),
        ("b2_application_key", "your-b2-application-key-here"),
        ("s3_secret_access_key", "placeholder-placeholder-placeholder"),
        ("database_url", "postgresql://orbit:change-me@pgbouncer:6432/orbit"),
        ("database_listen_url", "postgresql://orbit:changeme@postgres:5432/orbit"),
        ("redis_url", "redis://:change-me@redis:6379/0"),
    ],
)
def test_production_refuses_a_placeholder_in_any_secret(setting: str, placeholder: str) -> None:
    values = PRODUCTION | {setting: placeholder}
    if setting == "b2_application_key":
        values["b2_application_key_id"] = "004abc"
    with pytest.raises(ValidationError) as refused:
        make(**values)
    line = describe_invalid_settings(refused.value)
    assert f"{setting.upper()} still holds a placeholder value" in line
    assert placeholder not in line
    make(**(values | {"environment": "development"}))  # development takes it


@pytest.mark.parametrize(
    ("setting", "value", "minimum"),
    [
        ("metrics_token", "m" * 20, 24),
        ("b2_application_key", "K004short", 20),
        ("s3_secret_access_key", "s" * 12, 20),
    ],
)
def test_production_refuses_short_secrets(setting: str, value: str, minimum: int) -> None:
    values = PRODUCTION | {setting: value, "b2_application_key_id": "004abc"}
    with pytest.raises(ValidationError) as refused:
        make(**values)
    line = describe_invalid_settings(refused.value)
    assert f"{setting.upper()} must be at least {minimum} characters" in line
    assert value not in line


@pytest.mark.parametrize("setting", ["jwt_jwks_url", "s3_endpoint_url", "b2_realm"])
def test_production_endpoints_must_be_https_unless_allowed(setting: str) -> None:
    plain = PRODUCTION | {setting: "http://10.0.0.7:8080/keys"}
    with pytest.raises(ValidationError, match=f"{setting.upper()} must use https://"):
        make(**plain)
    assert getattr(make(**plain, allow_plain_http=True), setting).startswith("http://")
    assert make(**(PRODUCTION | {setting: "https://idp.example/keys"}))


def test_production_needs_a_shared_state_secret_to_serve_with_redis() -> None:
    with pytest.raises(ConfigurationError, match="SHARED_STATE_SECRET is required"):
        serving(**PRODUCTION, redis_url="redis://redis:6379/0")
    serving(**PRODUCTION, redis_url="redis://redis:6379/0", shared_state_secret="s" * 32)
    # Development makes one in the data folder instead.
    serving(environment="development", redis_url="redis://redis:6379/0")


def test_secrets_dir_moves_the_secrets_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kubernetes mounts a Secret as files named after its keys, upper case included."""
    from app.core.settings import secrets_dir

    monkeypatch.delenv("JWT_SECRET", raising=False)
    (tmp_path / "JWT_SECRET").write_text("a-mounted-secret-0123456789abcdef0123")
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    assert secrets_dir() == tmp_path
    settings = Settings(_env_file=None, _secrets_dir=secrets_dir())  # type: ignore[call-arg]
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "a-mounted-secret-0123456789abcdef0123"
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "absent"))
    assert secrets_dir() is None
