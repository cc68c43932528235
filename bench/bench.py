"""`make bench`: the service against the floor, with wrk, on this machine, in one run.

- Database: DATABASE_URL, or an embedded Postgres kept in BENCH_DATA_DIR (default .data-bench),
  seeded once with BENCH_ROWS (default 1,000,000) exports over 10,000 organizations.
- Requests: wrk, 64 connections, each request a random line of a list of BENCH_SAMPLE (3,000)
  random completed exports from 1,000 organizations with their API key or JWT.
- Cases, alternating in one run: floor, service with API keys (also with Python's default GC
  threshold, the A/B of GC_GEN0_THRESHOLD), service with JWTs, and the
  s3 signer (STORAGE_SIGNER=s3) with URLs reused per file and signed on every request
  (EXPORT_URL_CACHE_SIZE=0); with 1 worker (BENCH_WORKERS=1,2 adds WEB_CONCURRENCY=2). Each
  case gets warm-up rounds of BENCH_WARMUP_SECONDS until one makes no B2 call (every worker
  then holds a token for every file: the steady state the service is built for). Then
  BENCH_ROUNDS (4) rounds measure each case for BENCH_SECONDS (10), the cases interleaved and
  their order rotated.
- Storage is the B2 emulator; its request log gives the B2 calls made during measured runs.
- Writes docs/performance.md (between markers) with the figures.
- SMOKE=1 (`make bench SMOKE=1`, run by CI): every case once, 1 s each, on 2,000 rows in their
  own data folder; nothing is written.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import jwt
import psutil
from harness import SMOKE, free_port, replace_section, smoke_or, wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROWS = int(smoke_or("BENCH_ROWS", "1000000", "2000"))
ORGS = 10_000 if not SMOKE else 100
KEYED_ORGS = 1_000 if not SMOKE else 50
SAMPLE = int(smoke_or("BENCH_SAMPLE", "3000", "100"))
SECONDS = int(smoke_or("BENCH_SECONDS", "10", "1"))
ROUNDS = int(smoke_or("BENCH_ROUNDS", "4", "1"))
WARMUP = int(smoke_or("BENCH_WARMUP_SECONDS", "15", "2"))
WARMUP_ROUNDS = 6
CONNECTIONS = 64
BUCKET = "orbit-bench"
JWT_SECRET = "bench-" + "b" * 40
B2_KEY_ID, B2_KEY = "bench-key-id", "bench-application-key"
EMULATOR_ADMIN = {"Authorization": f"Bearer {B2_KEY}"}
WORK = ROOT / "bench" / "results"
# For quick comparisons while working on the hot path; the doc is written only by a full run.
DEFAULT_CASES = [
    "floor", "key", "key+gc700", "jwt", "key+ratelimit", "key+redis", "key+pgbouncer",
    "key+s3", "key+s3cold", "key+otel", "key+otel1pct",
]  # fmt: skip
CASES = os.environ.get("BENCH_CASES", ",".join(DEFAULT_CASES)).split(",")
# "case+variant": the case with these settings (A/Bs in one interleaved run).
S3 = {
    "STORAGE_SIGNER": "s3",
    # Signing is local: nothing is sent there.
    "S3_ENDPOINT_URL": "https://s3.us-west-004.backblazeb2.com",
    "S3_REGION": "us-west-004",
}
# "redis" and "pgbouncer" are filled in by main(), which starts them.
VARIANTS: dict[str, dict[str, str]] = {
    "h11": {"HTTP_PARSER": "h11"},
    "httptools": {"HTTP_PARSER": "httptools"},
    # Python's own young-generation threshold, against the service's default (GC_GEN0_THRESHOLD).
    "gc700": {"GC_GEN0_THRESHOLD": "700"},
    # What the access line, the audit and the metrics each cost (A/Bs).
    "quiet": {"LOG_LEVEL": "WARNING"},
    "noaudit": {"AUDIT": "off"},
    "nometrics": {"METRICS_ENABLED": "false"},
    "s3": S3,
    "s3cold": S3 | {"EXPORT_URL_CACHE_SIZE": "0"},
    # A limit no request reaches: its cost, not its refusals (one Redis call per request with
    # REDIS_URL).
    "ratelimit": {"RATE_LIMIT_PER_MINUTE": "1000000", "RATE_LIMIT_BURST": "1000000"},
    # Tracing on, every request traced and one in a hundred; spans go to `orbit-dev otlp-sink`
    # (main() fills the endpoint in).
    "otel": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.0"},
    "otel1pct": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    },
}
# All eight default cases with two workers each would need more than Postgres's default 100
# connections: BENCH_WORKERS=2 with a few BENCH_CASES.
WORKERS = [int(w) for w in os.environ.get("BENCH_WORKERS", "1").split(",")]


def database_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    from app.db.embedded import embedded_postgres_url
    from app.db.migrations import run_migrations

    default = ROOT / (".data-bench-smoke" if SMOKE else ".data-bench")
    url = embedded_postgres_url(Path(os.environ.get("BENCH_DATA_DIR", default)))
    run_migrations(url)
    return url


async def seed(url: str) -> list[tuple[str, str, str]]:
    """Rows (once), keys and JWTs; returns (path, header, value) request lines."""
    from app.auth.api_keys import generate_key, hash_key, visible_prefix

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        have = await conn.fetchval("SELECT count(*) FROM intent_audience_exports")
        if have < ROWS:
            print(f"bench: seeding {ROWS - have} export rows (once)...", flush=True)
            await conn.execute(
                f"""
                INSERT INTO intent_audience_exports
                  (organization_id, audience_id, run_id, status, bucket_name, file_name, file_id,
                   byte_size, row_count, content_sha1, error_code, error_message, completed_at)
                SELECT md5('org' || (i % {ORGS}))::uuid, md5('aud' || (i % {ORGS}))::uuid,
                       md5('run' || (i % {ORGS}))::uuid,
                       CASE WHEN i % 10 = 0 THEN 'processing' ELSE 'completed' END,
                       '{BUCKET}', 'exports/' || i || '/audience.csv', '4_z' || md5(i::text),
                       40000 + i % 1000, 300 + i % 50, md5(i::text || 'sha'), NULL, NULL, now()
                FROM generate_series({have + 1}, {ROWS}) AS i
                """  # noqa: S608 - integers of this script, no outside input
            )
            await conn.execute("ANALYZE intent_audience_exports")
        orgs = [str(uuid.UUID(bytes=bytes.fromhex(_md5(f"org{i}")))) for i in range(KEYED_ORGS)]
        await conn.execute("DELETE FROM api_keys WHERE name = 'bench'")
        keys: dict[str, str] = {}
        for org in orgs:
            key = generate_key()
            keys[org] = key
            await conn.execute(
                "INSERT INTO api_keys (organization_id, name, prefix, key_hash)"
                " VALUES ($1, 'bench', $2, $3)",
                uuid.UUID(org),
                visible_prefix(key),
                hash_key(key),
            )
        rows = await conn.fetch(
            "SELECT id, organization_id, audience_id, run_id FROM intent_audience_exports"
            " WHERE organization_id = ANY($1::uuid[]) AND status = 'completed'"
            " ORDER BY random() LIMIT $2",
            [uuid.UUID(o) for o in orgs],
            SAMPLE,
        )
    finally:
        await conn.close()
    lines = []
    expires = datetime.now(UTC) + timedelta(hours=6)
    for row in rows:
        org = str(row["organization_id"])
        path = f"/v1/intent/audiences/{row['audience_id']}/runs/{row['run_id']}/exports/{row['id']}"
        token = jwt.encode({"sub": "bench", "org_id": org, "exp": expires}, JWT_SECRET)
        lines.append((path, keys[org], token))
    return lines


def _md5(text: str) -> str:
    import hashlib

    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@dataclass
class Result:
    case: str
    workers: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    b2_calls: int
    peak_rss_mib: float
    ready_s: float
    body_bytes: int
    # CPU time of the server's processes (all workers) per request answered.
    cpu_us: float


def _ms(value: str) -> float:
    number, unit = float(re.match(r"[\d.]+", value).group()), re.sub(r"[\d.]", "", value)  # type: ignore[union-attr]
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(base: str, script_input: Path, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s",
         str(ROOT / "bench" / "paths.lua"), base, "--", str(script_input)],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    if errors:
        kinds = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]+)", out)
        print(f"bench:   errors: {'; '.join(kinds)}", flush=True)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(latency["50"]),
        "p99": _ms(latency["99"]),
        "errors": errors,
    }


def b2_sign_calls(emulator_url: str) -> int:
    return sum(
        1
        for r in httpx.get(f"{emulator_url}/_emulator/requests", headers=EMULATOR_ADMIN).json()
        if "b2_get_download_authorization" in r["path"]
    )


def warm_up(base: str, script_input: Path, emulator_url: str) -> None:
    """Rounds of load until one makes no B2 call: every worker holds a token for every file,
    the steady state the service is built for (and that the issue measures)."""
    for round_number in range(1, WARMUP_ROUNDS + 1):
        httpx.delete(f"{emulator_url}/_emulator/requests", headers=EMULATOR_ADMIN)
        run_wrk(base, script_input, WARMUP)
        calls = b2_sign_calls(emulator_url)
        print(f"bench:   warm-up round {round_number}: {calls} B2 calls", flush=True)
        if calls == 0:
            return


def sample_rss(proc: psutil.Process, stop: threading.Event, peak: list[float]) -> None:
    while not stop.is_set():
        try:
            procs = proc.children(recursive=True) or [proc]
            peak.append(max(p.memory_info().rss for p in procs) / 2**20)
        except psutil.Error:
            pass
        stop.wait(0.5)


@dataclass
class Running:
    """A server under test, kept up for every round of its worker count."""

    case: str
    workers: int
    proc: subprocess.Popen[bytes]
    base: str
    script_input: Path
    ready_s: float
    body_bytes: int
    slices: list[dict[str, float]] = field(default_factory=list)
    b2_calls: int = 0
    peak_rss_mib: float = 0.0
    cpu_seconds: float = 0.0


def cpu_seconds(proc: psutil.Process) -> float:
    """User and system CPU time of the server and its worker processes so far."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def start_case(case: str, workers: int, url: str, lines_file: Path, emulator_url: str) -> Running:
    """Start the case's server, check one request, warm it up to the steady state."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("B2_", "JWT_", "DEMO"))}
    env |= {
        "DATABASE_URL": url,
        "JWT_SECRET": JWT_SECRET,
        "B2_APPLICATION_KEY_ID": B2_KEY_ID,
        "B2_APPLICATION_KEY": B2_KEY,
        "B2_REALM": emulator_url,
        "RATE_LIMIT_PER_MINUTE": "0",
        # As deployed: one access line per request (the floor logs nothing).
        "LOG_LEVEL": "INFO",
        "WEB_CONCURRENCY": str(workers),
        # Every case's server runs at once against one Postgres (max_connections 100 by
        # default): 8 connections per process keep them all under it. Past it, the servers
        # that open connections last get "too many clients", answered as 503s.
        "DB_POOL_SIZE": str(max(2, 8 // workers)),
        "DB_MAX_OVERFLOW": "0",
    }
    case, _, variant = case.partition("+")
    env |= VARIANTS.get(variant, {})
    if case == "floor":
        command = [str(BIN / "uvicorn"), "bench.floor:app", "--port", str(port)]
        command += ["--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    else:
        command = [str(BIN / "orbit-exports"), "serve", "--port", str(port)]
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + ("/livez" if case != "floor" else "/docs"), proc)
        ready = time.monotonic() - started
        path, key, token = lines_file.read_text().splitlines()[0].split("\t")[0:3]
        header = {"X-API-Key": key} if case != "jwt" else {"Authorization": f"Bearer {token}"}
        body = httpx.get(base + path, headers=header, timeout=10)
        assert body.status_code == 200, body.text
        script_input = lines_file.with_suffix(f".{case}.tsv")
        with script_input.open("w") as f:
            for line in lines_file.read_text().splitlines():
                p, k, t = line.split("\t")
                f.write(
                    f"{p}\tAuthorization\tBearer {t}\n"
                    if case == "jwt"
                    else f"{p}\tX-API-Key\t{k}\n"
                )
        warm_up(base, script_input, emulator_url)
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise
    name = f"{case}+{variant}" if variant else case
    return Running(name, workers, proc, base, script_input, ready, len(body.content))


def measure_slice(running: Running, emulator_url: str) -> None:
    """One measured wrk run of SECONDS; B2 calls and memory are counted during it."""
    httpx.delete(f"{emulator_url}/_emulator/requests", headers=EMULATOR_ADMIN)
    stop, peak = threading.Event(), []
    sampler = threading.Thread(
        target=sample_rss, args=(psutil.Process(running.proc.pid), stop, peak)
    )
    sampler.start()
    server = psutil.Process(running.proc.pid)
    cpu_before = cpu_seconds(server)
    try:
        running.slices.append(run_wrk(running.base, running.script_input, SECONDS))
    finally:
        stop.set()
        sampler.join()
    running.cpu_seconds += cpu_seconds(server) - cpu_before
    running.b2_calls += b2_sign_calls(emulator_url)
    running.peak_rss_mib = max([running.peak_rss_mib, *peak])


def stop(running: Running) -> None:
    running.proc.terminate()
    running.proc.wait(30)


def summary(running: Running) -> Result:
    slices = running.slices
    requests = sum(int(s["requests"]) for s in slices)
    return Result(
        running.case, running.workers,
        rps=sum(s["rps"] for s in slices) / len(slices),
        p50_ms=statistics.median(s["p50"] for s in slices),
        p99_ms=statistics.median(s["p99"] for s in slices),
        errors=sum(int(s["errors"]) for s in slices), requests=requests,
        b2_calls=running.b2_calls, peak_rss_mib=running.peak_rss_mib,
        ready_s=running.ready_s, body_bytes=running.body_bytes,
        cpu_us=running.cpu_seconds / max(1, requests) * 1e6,
    )  # fmt: skip


def run_worker_count(workers: int, url: str, lines_file: Path, emulator_url: str) -> list[Result]:
    """Every case's server up at once, then ROUNDS rounds of one slice per case, the order
    rotated each round: this machine's speed drifts by 10-20% over minutes, and a case measured
    only before or after another would carry that drift into the ratio."""
    running: list[Running] = []
    try:
        for case in CASES:
            print(f"bench: starting {case}, {workers} worker(s)...", flush=True)
            running.append(start_case(case, workers, url, lines_file, emulator_url))
        for round_number in range(ROUNDS):
            shift = round_number % len(running)
            for r in running[shift:] + running[:shift]:
                measure_slice(r, emulator_url)
                last = r.slices[-1]
                print(
                    f"bench:   round {round_number + 1}, {r.case}: {last['rps']:,.0f} req/s,"
                    f" p99 {last['p99']:.1f} ms",
                    flush=True,
                )
    finally:
        # Every server is stopped, also when a round failed (whose error then surfaces as is).
        for r in running:
            stop(r)
    return [summary(r) for r in running]


def report(results: list[Result]) -> str:
    floor = {r.workers: r for r in results if r.case == "floor"}
    names = {
        "floor": "floor (FastAPI + asyncpg, PK select)",
        "key": "service, API key",
        "key+gc700": "service, API key, Python's default GC threshold (700)",
        "jwt": "service, JWT",
        "key+redis": "service, API key, rate limit on, REDIS_URL set (fleet-wide limit, tokens)",
        "key+pgbouncer": "service, API key, PgBouncer (transaction mode), no prepared statements",
        "key+ratelimit": "service, API key, in-process rate limit on",
        "key+s3": "service, API key, s3 signer (URLs reused)",
        "key+s3cold": "service, API key, s3 signer (signed every request)",
        "key+otel": "service, API key, tracing on, every request traced",
        "key+otel1pct": "service, API key, tracing on, 1 % of requests traced",
        "key+quiet": "service, API key, LOG_LEVEL=WARNING (no access line)",
        "key+noaudit": "service, API key, AUDIT=off",
        "key+nometrics": "service, API key, METRICS_ENABLED=false",
    }
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on this machine ({os.cpu_count()} cores),"
        f" wrk -t2 -c{CONNECTIONS}, {ROUNDS} interleaved rounds of {SECONDS} s per case (req/s:"
        " mean of the rounds; p50, p99: median of the rounds), after warm-up rounds of"
        f" {WARMUP} s until one made no B2 call,"
        f" {ROWS:,} export rows, {SAMPLE:,} random completed exports requested.",
        "",
        "| case | workers | req/s | vs floor | p50 ms | p99 ms | p99 vs floor | CPU µs/req"
        " | errors | B2 calls | peak RSS/worker MiB | ready s | body bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f = floor[r.workers]
        lines.append(
            f"| {names.get(r.case, r.case)} | {r.workers} | {r.rps:,.0f} | {r.rps / f.rps:.2f} | "
            f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.p99_ms / f.p99_ms:.2f} | {r.cpu_us:.0f} | "
            f"{r.errors} | "
            f"{r.b2_calls} | {r.peak_rss_mib:.0f} | {r.ready_s:.2f} | {r.body_bytes} |"
        )
    return "\n".join(lines)


def write_doc(text: str) -> None:
    replace_section(ROOT / "docs" / "performance.md", "bench", text)


def start_fleet_parts(stack: ExitStack, url: str) -> None:
    """Redis and PgBouncer (Debian's, as `make cluster` runs them) for the cases that use them."""
    from orbit_dev.cluster import start_pgbouncer, start_redis

    variants = {case.partition("+")[2] for case in CASES}
    # PgBouncer runs as postgres (it refuses root): a folder it can reach and write.
    folder = Path(tempfile.mkdtemp(prefix="orbit-bench-fleet-"))
    folder.chmod(0o777)
    stack.callback(shutil.rmtree, folder, True)
    if "redis" in variants:
        VARIANTS["redis"] = VARIANTS["ratelimit"] | {"REDIS_URL": start_redis(stack, folder)}
    if variants & {"otel", "otel1pct"}:
        port = free_port()
        sink = subprocess.Popen(
            [str(BIN / "orbit-dev"), "otlp-sink", "--port", str(port)], stdout=subprocess.DEVNULL
        )
        stack.callback(sink.wait, 10)
        stack.callback(sink.terminate)
        for variant in ("otel", "otel1pct"):
            VARIANTS[variant]["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    if "pgbouncer" in variants:
        own = folder / "pgbouncer"  # its files; our logs of it stay beside
        own.mkdir()
        own.chmod(0o777)
        VARIANTS["pgbouncer"] = {
            "DATABASE_URL": start_pgbouncer(stack, url, own, folder),
            "DB_PREPARED_STATEMENTS": "false",
            # LISTEN needs a session of its own: Postgres itself.
            "DATABASE_LISTEN_URL": url,
        }


def main() -> int:
    if shutil.which("wrk") is None:
        print("bench: wrk is missing (make bench installs it)", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    url = database_url()
    lines = asyncio.run(seed(url))
    lines_file = WORK / "requests.tsv"
    lines_file.write_text("".join(f"{p}\t{k}\t{t}\n" for p, k, t in lines))
    emulator_port = free_port()
    emulator = subprocess.Popen(
        [str(BIN / "orbit-dev"), "b2-emulator", "--port", str(emulator_port),
         "--key-id", B2_KEY_ID, "--key", B2_KEY, "--bucket", BUCKET],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    results: list[Result] = []
    fleet = ExitStack()
    try:
        start_fleet_parts(fleet, url)
        wait_for(emulator_url + "/_emulator/health", emulator)
        for workers in WORKERS:
            for result in run_worker_count(workers, url, lines_file, emulator_url):
                results.append(result)
                print(json.dumps(result.__dict__), flush=True)
    finally:
        fleet.close()
        emulator.terminate()
        emulator.wait(10)
    table = report(results)
    print(table)
    if CASES == DEFAULT_CASES:
        write_doc(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
