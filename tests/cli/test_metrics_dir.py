"""PROMETHEUS_MULTIPROC_DIR is the operator's folder: the service clears only the sample files
an earlier run left there, and refuses (exit 2, one line) a folder holding anything else rather
than emptying it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from app.cli.serve import MetricsDirNotOurs, _prepare_metrics_dir
from tests.support.constants import CLI


def test_earlier_samples_are_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("counter_12.db", "gauge_livesum_12.db", "histogram_7.db"):
        (tmp_path / name).write_bytes(b"old")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert _prepare_metrics_dir() is None
    assert list(tmp_path.iterdir()) == []


def test_a_missing_folder_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "new"))
    _prepare_metrics_dir()
    assert (tmp_path / "new").is_dir()


@pytest.mark.parametrize("foreign", ["notes.txt", "counter_12.db.bak", "sub/"])
def test_a_folder_with_other_files_is_refused_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, foreign: str
) -> None:
    (tmp_path / "counter_12.db").write_bytes(b"old")
    path = tmp_path / foreign.rstrip("/")
    path.mkdir() if foreign.endswith("/") else path.write_text("keep me")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(MetricsDirNotOurs):
        _prepare_metrics_dir()
    assert path.exists() and (tmp_path / "counter_12.db").exists()


def test_serve_exits_2_with_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "precious.csv").write_text("data")
    env = cli_env | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "WEB_CONCURRENCY": "2"}
    result = subprocess.run([CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("configuration error: PROMETHEUS_MULTIPROC_DIR")
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "precious.csv").read_text() == "data"
