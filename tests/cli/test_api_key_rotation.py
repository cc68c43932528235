"""`orbit-exports api-keys rotate KEY_ID [--overlap DURATION]`: a new key for the same
organization and name, printed once on the last line; both keys work during the overlap, the
old one stops after it; `list` shows both with their expiry; revoking either is immediate."""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.cli.common import duration_argument
from tests.support.app import key_headers
from tests.support.constants import CLI
from tests.support.secrets import SECRETS


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def created(env: dict[str, str], org: str, name: str = "billing") -> tuple[str, str]:
    out = run(env, "api-keys", "create", "--org", org, "--name", name).stdout
    key = out.strip().splitlines()[-1]
    SECRETS.add(key)
    return out.split("id=")[1].split()[0], key


def rotated(env: dict[str, str], key_id: str, *overlap: str) -> tuple[str, str, str]:
    """The new key's id, the new key, and the whole output."""
    out = run(env, "api-keys", "rotate", key_id, *overlap).stdout
    key = out.strip().splitlines()[-1]
    SECRETS.add(key)
    return out.split("created API key id=")[1].split()[0], key, out


def status(server: str, key: str) -> int:
    path = f"/v1/intent/audiences/{uuid.uuid4()}/runs/{uuid.uuid4()}/exports/{uuid.uuid4()}"
    return httpx.get(server + path, headers=key_headers(key), timeout=10).status_code


def test_both_keys_work_during_the_overlap_and_either_can_be_revoked(
    cli_env: dict[str, str], live_server: str
) -> None:
    org = str(uuid.uuid4())
    old_id, old_key = created(cli_env, org)
    new_id, new_key, out = rotated(cli_env, old_id)
    assert new_key.startswith("sk_") and new_key != old_key
    assert old_key not in out
    # Both work (the default overlap is 24 h), each as the same organization.
    assert status(live_server, old_key) == 404
    assert status(live_server, new_key) == 404
    listing = run(cli_env, "api-keys", "list", "--org", org).stdout.splitlines()
    rows = {line.split()[0]: line for line in listing}
    assert set(rows) == {old_id, new_id}
    old_expiry = datetime.fromisoformat(rows[old_id].split("expires=")[1].split()[0])
    assert abs(old_expiry - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=5)
    assert "expires=never" in rows[new_id] and "name=billing" in rows[new_id]
    # Revoking either is immediate (the live server checks every request).
    run(cli_env, "api-keys", "revoke", old_id)
    assert status(live_server, old_key) == 401
    assert status(live_server, new_key) == 404


def test_the_old_key_stops_when_the_overlap_ends(cli_env: dict[str, str], live_server: str) -> None:
    org = str(uuid.uuid4())
    old_id, old_key = created(cli_env, org)
    _, new_key, _ = rotated(cli_env, old_id, "--overlap", "1s")
    deadline = time.monotonic() + 10
    while status(live_server, old_key) != 401:
        assert time.monotonic() < deadline, "the old key outlived its overlap"
        time.sleep(0.1)
    assert status(live_server, new_key) == 404
    assert "expired" in run(cli_env, "api-keys", "list", "--org", org).stdout


def test_a_revoked_or_unknown_key_is_not_rotated(cli_env: dict[str, str]) -> None:
    org = str(uuid.uuid4())
    key_id, _ = created(cli_env, org)
    run(cli_env, "api-keys", "revoke", key_id)
    refused = run(cli_env, "api-keys", "rotate", key_id, check=False)
    assert refused.returncode == 1 and "revoked or expired" in refused.stderr
    unknown = run(cli_env, "api-keys", "rotate", str(uuid.uuid4()), check=False)
    assert unknown.returncode == 1 and "no API key" in unknown.stderr
    bad = run(cli_env, "api-keys", "rotate", key_id, "--overlap", "soon", check=False)
    assert bad.returncode == 2 and "not a duration" in bad.stderr


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("24h", 86_400), ("90m", 5_400), ("2d", 172_800), ("1h30m", 5_400), ("45s", 45), ("0", 0)],
)
def test_durations(given: str, seconds: int) -> None:
    assert duration_argument(given) == timedelta(seconds=seconds)


@pytest.mark.parametrize("given", ["", "soon", "1y", "h", "-1h", "400d"])
def test_bad_durations(given: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_argument(given)
