"""Soak test: a real `orbit-exports serve` with several workers, driven on loopback for a few
minutes with a mix of 200/404/409/401 requests. Reports unexpected statuses, 5xx, latency and
worker memory over time, and writes the summary into docs/reliability.md.

    make soak                      # 180 s, 32 concurrent clients, WEB_CONCURRENCY=2
    SOAK_SECONDS=60 make soak
    make soak SMOKE=1              # 5 s, 4 clients: does it still work (CI runs it)

Traffic goes to 127.0.0.1 only; the loop is bounded by SOAK_SECONDS and stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import psutil
from harness import free_port, replace_section, smoke_or, wait_for

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "orbit-exports")
DEV_CLI = str(Path(sys.executable).parent / "orbit-dev")
SECONDS = int(smoke_or("SOAK_SECONDS", "180", "5"))
CLIENTS = int(smoke_or("SOAK_CLIENTS", "32", "4"))
WORKERS = os.environ.get("SOAK_WORKERS", "2")
JWT_SECRET = "soak-" + "s" * 40
B2_KEY_ID, B2_KEY, BUCKET = "soak-key-id", "soak-application-key", "orbit-soak"


def cli(env: dict[str, str], command: str, *args: str) -> str:
    return subprocess.run(
        [command, *args], env=env, check=True, capture_output=True, text=True, timeout=120
    ).stdout


@dataclass
class Fixture:
    # (organization, path) pairs and (organization, credential) pairs.
    completed: list[tuple[str, str]] = field(default_factory=list)
    processing: list[tuple[str, str]] = field(default_factory=list)
    keys: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[tuple[str, str]] = field(default_factory=list)


def seed(env: dict[str, str], csv_path: Path) -> Fixture:
    fixture = Fixture()
    for _ in range(4):
        org, audience, run = (str(uuid.uuid4()) for _ in range(3))
        base = f"/v1/intent/audiences/{audience}/runs/{run}/exports/"
        common = ["exports", "add", "--org", org, "--audience", audience, "--run", run]
        for _ in range(3):
            row = cli(env, DEV_CLI, *common, "--bucket", BUCKET, "--file", str(csv_path))
            fixture.completed.append((org, base + re.findall(r'"id":"([^"]+)"', row)[0]))
        row = cli(env, DEV_CLI, *common, "--bucket", BUCKET, "--status", "processing")
        fixture.processing.append((org, base + re.findall(r'"id":"([^"]+)"', row)[0]))
        key = cli(env, CLI, "api-keys", "create", "--org", org).strip().splitlines()[-1]
        now = datetime.now(UTC)
        claims = {"sub": str(uuid.uuid4()), "org_id": org, "exp": now + timedelta(hours=2)}
        fixture.keys.append((org, key))
        fixture.tokens.append((org, jwt.encode(claims, JWT_SECRET, algorithm="HS256")))
    return fixture


async def drive(base: str, fixture: Fixture, stats: dict[str, object]) -> None:
    rng = random.Random(1)
    statuses: Counter[tuple[str, int]] = Counter()
    latencies: list[float] = []
    keys = dict(fixture.keys)
    tokens = dict(fixture.tokens)
    deadline = time.monotonic() + SECONDS

    def pick() -> tuple[str, str, dict[str, str], set[int]]:
        roll = rng.random()
        if roll < 0.50:
            org, path = rng.choice(fixture.completed)
            return "200-key", path, {"X-API-Key": keys[org]}, {200}
        if roll < 0.65:
            org, path = rng.choice(fixture.completed)
            return "200-jwt", path, {"Authorization": f"Bearer {tokens[org]}"}, {200}
        if roll < 0.75:
            org, path = rng.choice(fixture.processing)
            return "409", path, {"X-API-Key": keys[org]}, {409}
        if roll < 0.90:
            org, path = rng.choice(fixture.completed)
            return (
                "404",
                path.rsplit("/", 1)[0] + f"/{uuid.uuid4()}",
                {"X-API-Key": keys[org]},
                {404},
            )
        _, path = rng.choice(fixture.completed)
        return "401", path, {"X-API-Key": "sk_" + "x" * 43}, {401}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            while time.monotonic() < deadline:
                kind, path, headers, expected = pick()
                started = time.perf_counter()
                try:
                    response = await http.get(path, headers=headers)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                latencies.append(time.perf_counter() - started)
                statuses[(kind, status)] += 1
                if status not in expected:
                    stats.setdefault("unexpected", []).append((kind, status))  # type: ignore[union-attr]

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    stats["statuses"] = statuses
    stats["latencies"] = latencies


def workers_rss(server: psutil.Process) -> list[int]:
    """RSS of uvicorn's worker processes (the children of `serve`)."""
    return [p.memory_info().rss for p in server.children(recursive=True)]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="orbit-soak-"))
    emulator_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("B2_", "JWT_", "DEMO"))}
    env |= {
        "ORBIT_DATA_DIR": str(work / "data"),
        "JWT_SECRET": JWT_SECRET,
        "B2_APPLICATION_KEY_ID": B2_KEY_ID,
        "B2_APPLICATION_KEY": B2_KEY,
        "B2_REALM": f"http://127.0.0.1:{emulator_port}",
        "RATE_LIMIT_PER_MINUTE": "0",
        "LOG_LEVEL": "WARNING",
    }
    emulator = subprocess.Popen(
        [
            *(DEV_CLI, "b2-emulator", "--port", str(emulator_port)),
            *("--key-id", B2_KEY_ID, "--key", B2_KEY, "--bucket", BUCKET),
        ]
    )
    server = None
    try:
        wait_for(f"http://127.0.0.1:{emulator_port}/_emulator/health", emulator)
        csv_path = work / "audience.csv"
        csv_path.write_text("email,company\n" + "".join(f"u{i}@x.io,Co {i}\n" for i in range(300)))
        fixture = seed(env, csv_path)
        server = subprocess.Popen(
            [CLI, "serve", "--port", str(api_port)],
            env=env | {"WEB_CONCURRENCY": WORKERS},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{api_port}"
        wait_for(base + "/livez", server)
        time.sleep(2)  # every worker up
        proc = psutil.Process(server.pid)
        samples: list[tuple[float, list[int]]] = []
        stats: dict[str, object] = {}

        async def sample_memory() -> None:
            started = time.monotonic()
            while time.monotonic() - started < SECONDS:
                samples.append((time.monotonic() - started, workers_rss(proc)))
                await asyncio.sleep(5)

        async def run() -> None:
            await asyncio.gather(drive(base, fixture, stats), sample_memory())

        print(f"soak: {SECONDS} s, {CLIENTS} clients, WEB_CONCURRENCY={WORKERS}", flush=True)
        asyncio.run(run())
        report = summarize(stats, samples)
        print(report)
        write_doc(report)
        unexpected = stats.get("unexpected", [])
        return 1 if unexpected else 0
    finally:
        for p in (server, emulator):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)


def summarize(stats: dict[str, object], samples: list[tuple[float, list[int]]]) -> str:
    statuses: Counter[tuple[str, int]] = stats["statuses"]  # type: ignore[assignment]
    latencies: list[float] = sorted(stats["latencies"])  # type: ignore[arg-type]
    total = sum(statuses.values())
    unexpected = stats.get("unexpected", [])
    five_xx = sum(n for (_, status), n in statuses.items() if status >= 500 or status == 0)
    q = statistics.quantiles(latencies, n=100)
    # The first sample is taken before any load; short runs may have only that one.
    first, last = samples[min(1, len(samples) - 1)][1], samples[-1][1]
    peak = [max(s[1][i] for s in samples if len(s[1]) > i) for i in range(len(first))]
    mib = 1024 * 1024
    lines = [
        f"- run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {SECONDS} s, {CLIENTS} concurrent clients,"
        f" `WEB_CONCURRENCY={WORKERS}`, embedded Postgres, B2 emulator, 2-core machine",
        f"- requests: {total} ({total / SECONDS:.0f}/s), latency p50 {q[49] * 1000:.1f} ms,"
        f" p99 {q[98] * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms",
        f"- unexpected statuses: {len(unexpected)}; 5xx or transport errors: {five_xx}",
        "- by kind: "
        + ", ".join(f"{kind} → {status}: {n}" for (kind, status), n in sorted(statuses.items())),
        "- RSS of the server's child processes (uvicorn's process helper, then each worker),"
        " MiB after warm-up → end (peak): "
        + ", ".join(
            f"{a / mib:.1f} → {b / mib:.1f} ({p / mib:.1f})"
            for a, b, p in zip(first, last, peak, strict=False)
        ),
    ]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    replace_section(ROOT / "docs" / "reliability.md", "soak", text)


if __name__ == "__main__":
    raise SystemExit(main())
