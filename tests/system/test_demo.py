"""`make run`'s code path (`orbit-dev run`) on a fresh data folder, followed the way
a newcomer would: read the printed key and commands, call them, download the CSV."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.constants import DEV_CLI
from tests.support.contract import assert_matches_contract
from tests.support.processes import free_port


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    output: str
    port: int

    def curl(self, title: str) -> tuple[str, dict[str, str]]:
        """URL and headers of the first curl command printed after `title`."""
        section = self.output.split(title, 1)[1]
        line = next(x for x in section.splitlines() if x.strip().startswith("curl"))
        words = shlex.split(line.strip().rstrip("\\"))
        header = words[words.index("-H") + 1]
        name, _, value = header.partition(": ")
        return words[-1], {name: value}


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("B2_", "JWT_", "DATABASE_", "TEST_DATABASE", "DEMO"))
    }
    return env | {"ORBIT_DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"}


# Every demo a test started, stopped by the data_dir fixture even when the test failed midway.
STARTED: list[subprocess.Popen[str]] = []


def start(data_dir: Path, extra_env: dict[str, str] | None = None, *args: str) -> Demo:
    port = free_port()
    log = data_dir.parent / f"serve-{port}.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [DEV_CLI, "run", "--port", str(port), *args],
            env=_env(data_dir) | (extra_env or {}),
            cwd=data_dir.parent,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )
    STARTED.append(proc)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "Stop with Ctrl-C." in line or time.monotonic() > deadline:
            break
    output = "".join(lines)
    assert "Stop with Ctrl-C." in output, output + log.read_text()[-3000:]
    demo = Demo(proc, output, port)
    base = f"http://127.0.0.1:{port}"
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        try:
            live = httpx.get(base + "/livez", timeout=1)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        # Our service, not a child that took its port.
        assert live.status_code == 200 and live.json()["data"]["status"] == "ok", live.text
        return demo


def family(proc: subprocess.Popen[str], data_dir: Path) -> list[psutil.Process]:
    """The serve process's children plus the embedded Postgres serving `data_dir`."""
    found = psutil.Process(proc.pid).children(recursive=True)
    for p in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def assert_all_gone(processes: list[psutil.Process], timeout: float = 15) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, [p.info for p in alive]


def get(url: str, headers: dict[str, str]) -> httpx.Response:
    response = httpx.get(url, headers=headers)
    assert_matches_contract(response)
    return response


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(10)
    for p in psutil.process_iter(["cmdline"]):
        if str(path) in " ".join(p.info["cmdline"] or []):
            p.kill()


def test_first_start_prints_working_commands_and_ctrl_c_stops_everything(data_dir: Path) -> None:
    demo = start(data_dir)
    key = re.search(r"^\s+(sk_\S+)$", demo.output, re.MULTILINE)
    assert key, demo.output
    assert "eyJ" in demo.output  # the dashboard JWT

    url, headers = demo.curl("200 - the completed export")
    assert headers == {"X-API-Key": key.group(1)}
    ok = get(url, headers)
    assert ok.status_code == 200
    export = ok.json()["data"]["export"]
    assert 200 <= export["rowCount"] <= 1000
    csv_bytes = httpx.get(ok.json()["data"]["downloadUrl"]).content
    assert csv_bytes == (data_dir / "demo" / "audience-sample.csv").read_bytes()
    assert csv_bytes.count(b"\n") == export["rowCount"] + 1
    assert csv_bytes.startswith(b"company_name,domain,industry,")

    jwt_url, jwt_headers = demo.curl("...the same with the dashboard JWT")
    assert get(jwt_url, jwt_headers).status_code == 200
    assert get(*demo.curl("409 - an export that is still processing")).status_code == 409
    failed = get(*demo.curl("409 - an export that failed"))
    assert failed.json()["error"]["code"] == "EXPORT_FAILED"
    assert get(*demo.curl("404 - no such export")).status_code == 404

    processes = family(demo.proc, data_dir)
    assert len(processes) >= 2  # the emulator and the Postgres postmaster at least
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(20) == 0
    assert_all_gone(processes)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_the_demo_with_the_s3_signer_against_seaweedfs(data_dir: Path) -> None:
    """`make run-s3`: SeaweedFS instead of the emulator, STORAGE_SIGNER=s3; the printed
    command answers 200 and its URL downloads the sample through the S3 API."""
    demo = start(data_dir, None, "--signer", "s3")
    url, headers = demo.curl("200 - the completed export")
    ok = get(url, headers)
    assert ok.status_code == 200
    download_url = ok.json()["data"]["downloadUrl"]
    assert "X-Amz-Signature=" in download_url
    csv_bytes = httpx.get(download_url).content
    assert csv_bytes == (data_dir / "demo" / "audience-sample.csv").read_bytes()
    processes = family(demo.proc, data_dir)
    assert any("weed" in " ".join(p.cmdline()) for p in processes)
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(30) == 0
    assert_all_gone(processes, timeout=30)


def test_second_start_reuses_data_and_kill_9_recovers(data_dir: Path) -> None:
    # Two workers: the emulator beside them must not take WEB_CONCURRENCY for itself, and
    # the workers, like the emulator, must not outlive a supervisor killed outright.
    first = start(data_dir, {"WEB_CONCURRENCY": "2"})
    key_url, key_headers = first.curl("200 - the completed export")
    first_export = get(key_url, key_headers).json()["data"]["export"]
    first.proc.send_signal(signal.SIGINT)
    first.proc.wait(20)

    second = start(data_dir, {"WEB_CONCURRENCY": "2"})
    assert "was shown at the first start" in second.output
    assert "api-keys create --org" in second.output
    assert not re.search(r"^\s+sk_\S+$", second.output, re.MULTILINE)
    # The key from the first start still works, on the same export.
    key_url = key_url.replace(f":{first.port}/", f":{second.port}/")
    again = get(key_url, key_headers)
    assert again.status_code == 200
    assert again.json()["data"]["export"]["id"] == first_export["id"]
    children = psutil.Process(second.proc.pid).children(recursive=True)
    # The emulator, two workers and the resource tracker of multiprocessing's spawn context.
    assert len(children) == 4, children

    second.proc.kill()
    second.proc.wait(10)
    assert_all_gone(children)  # they die with their parent, even on SIGKILL

    third = start(data_dir)
    key_url = key_url.replace(f":{second.port}/", f":{third.port}/")
    assert get(key_url, key_headers).status_code == 200
    processes = family(third.proc, data_dir)
    third.proc.send_signal(signal.SIGINT)
    assert third.proc.wait(20) == 0
    assert_all_gone(processes)


def test_demo_emulator_starts_with_a_key_that_looks_like_an_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A random URL-safe key starts with "-" one time in 64; it must still reach the emulator."""
    from orbit_dev import children

    monkeypatch.setattr(children.secrets, "token_urlsafe", lambda n: "-looks-like-an-option")
    # _start_emulator points this process's environment at the emulator; setenv here makes
    # monkeypatch restore the three variables afterwards.
    for name in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "B2_REALM"):
        monkeypatch.setenv(name, "unset")
    proc = children.start_emulator("demo-bucket", ["http://localhost:5173"])
    try:
        assert os.environ["B2_APPLICATION_KEY"] == "-looks-like-an-option"
        realm = os.environ["B2_REALM"]
        ok = httpx.post(
            f"{realm}/b2api/v3/b2_authorize_account",
            auth=(os.environ["B2_APPLICATION_KEY_ID"], "-looks-like-an-option"),
        )
        assert ok.status_code == 200
        # The dashboard origins of CORS_ALLOW_ORIGINS may download from the demo bucket too.
        account = ok.json()
        buckets = httpx.post(
            f"{realm}/b2api/v3/b2_list_buckets",
            headers={"Authorization": account["authorizationToken"]},
            json={"accountId": account["accountId"]},
        ).json()["buckets"]
        [rule] = buckets[0]["corsRules"]
        assert rule["allowedOrigins"] == ["http://localhost:5173"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_demos_children_never_take_the_services_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may hand a just-released port out again: in CI SeaweedFS got the demo's API
    port and answered its requests. Ports kept for the service, ports already handed out and
    SeaweedFS's gRPC ports (+ 10000) are skipped."""
    from orbit_dev import children

    kernel = iter([8000, 41000, 41000, 31000, 41001, 42000, 43000, 44000, 45000])

    class Socket:
        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            self.port = address[1] or next(kernel)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(children, "_TAKEN", set())
    monkeypatch.setattr(children.socket, "socket", Socket)
    children.keep_free(8000)
    children.keep_free(51001)  # 41001's gRPC port
    assert children.free_port() == 41000  # not the kept 8000
    # 41000 again and 31000 (its gRPC port 41000 is taken) are skipped, then 41001 (gRPC 51001).
    assert children._seaweedfs_ports() == [42000, 43000, 44000, 45000]
