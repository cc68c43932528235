"""What the s3 signer costs on this machine: importing it with the AWS Common Runtime and signing
the first URL (in a fresh interpreter, as at a worker's start), one presigned URL, one reuse
from the URL cache instead, and, for comparison, one URL from botocore's presigner (the
reference it is tested against). `python bench/s3_signing.py` (part of `make bench`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from harness import SMOKE

# Fresh interpreters, and URLs per measurement (a few in smoke mode: SMOKE=1).
COLD_RUNS, URLS, BOTOCORE_URLS = (1, 20, 20) if SMOKE else (5, 3000, 1000)

COLD = """
import time
started = time.perf_counter()
from app.core.settings import Settings
from app.storage.s3_signer import S3Signer
from app.storage.token_cache import InMemoryTokenCache
settings = Settings(_env_file=None, storage_signer="s3",
    s3_endpoint_url="https://s3.us-west-004.backblazeb2.com", s3_region="us-west-004",
    s3_access_key_id="004abc", s3_secret_access_key="secret")
imported = time.perf_counter()
signer = S3Signer(settings, InMemoryTokenCache(0, 0))
signer.presign("orbit-exports", "exports/a.csv", 3600)
print(imported - started, time.perf_counter() - imported)
"""


BENCH_SECRET = "bench-" + "s" * 20  # signs nothing anyone checks


def cold_start() -> tuple[float, float]:
    """Seconds to import (settings + signer module) and to build the signer (the runtime's
    import included) and sign the first URL; the median of COLD_RUNS fresh interpreters."""
    runs = []
    for _ in range(COLD_RUNS):
        out = subprocess.run(
            [sys.executable, "-c", COLD], capture_output=True, text=True, check=True
        )
        imported, first = (float(x) for x in out.stdout.split())
        runs.append((imported, first))
    runs.sort(key=sum)
    return runs[len(runs) // 2]


def _settings() -> Any:
    from app.core.settings import Settings

    return Settings(  # type: ignore[call-arg]
        _env_file=None, storage_signer="s3",
        s3_endpoint_url="https://s3.us-west-004.backblazeb2.com", s3_region="us-west-004",
        s3_access_key_id="004abc", s3_secret_access_key=BENCH_SECRET,
    )  # fmt: skip


def per_url() -> tuple[float, float]:
    """Microseconds per presigned URL, and per reuse of a cached one (InMemoryTokenCache.get)."""
    from app.storage.s3_signer import S3Signer
    from app.storage.token_cache import InMemoryTokenCache

    signer = S3Signer(_settings(), InMemoryTokenCache(10_000, 600))
    n = URLS
    started = time.perf_counter()
    for i in range(n):
        signer.presign("orbit-exports", f"exports/{i}/audience.csv", 3600)
    signing = (time.perf_counter() - started) / n * 1e6

    async def reuse() -> float:
        await signer.sign("orbit-exports", "exports/x.csv", None)
        begun = time.perf_counter()
        for _ in range(n):
            await signer.sign("orbit-exports", "exports/x.csv", None)
        return (time.perf_counter() - begun) / n * 1e6

    return signing, asyncio.run(reuse())


def botocore_per_url() -> float:
    """Microseconds per URL from botocore's `generate_presigned_url`, the same inputs."""
    from orbit_dev.s3 import s3_client

    client = s3_client(_settings())
    n = BOTOCORE_URLS
    started = time.perf_counter()
    for i in range(n):
        client.generate_presigned_url(
            "get_object",
            Params={"Bucket": "orbit-exports", "Key": f"exports/{i}/audience.csv"},
            ExpiresIn=3600,
        )
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    imported, first = cold_start()
    signing, reused = per_url()
    result = {
        "at": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "import_s": round(imported, 3),
        "client_and_first_url_s": round(first, 3),
        "presign_us": round(signing, 1),
        "cached_sign_us": round(reused, 1),
        "botocore_presign_us": round(botocore_per_url(), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
