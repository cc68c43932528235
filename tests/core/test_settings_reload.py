"""The reloader itself: what changed is applied and nothing else, an invalid reload keeps the
running settings and names the setting (never its value), what only a restart applies is said
in one warning line, and the folder's signature sees a Kubernetes `..data` swap."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from app.core.settings import Settings
from app.core.settings_reload import SettingsReloader, _signature
from tests.support.secret_volume import SecretVolume

OLD = "old-jwt-secret-0123456789abcdef0123456789"
NEW = "new-jwt-secret-0123456789abcdef0123456789"


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Applied:
    def __init__(self) -> None:
        self.calls: list[tuple[Settings, frozenset[str]]] = []

    def __call__(self, settings: Settings, changed: frozenset[str]) -> None:
        self.calls.append((settings, changed))


def test_only_the_changed_secrets_and_limits_are_applied() -> None:
    applied = Applied()
    fresh = make(jwt_secret=NEW, jwt_previous_secrets=OLD, rate_limit_burst=7)
    reloader = SettingsReloader(make(jwt_secret=OLD), lambda: fresh, applied)
    assert reloader.reload("test")
    ((settings, changed),) = applied.calls
    assert changed == {"jwt_secret", "jwt_previous_secrets", "rate_limit_burst"}
    assert settings.jwt_secret == SecretStr(NEW)
    assert reloader.current is settings
    # Nothing changed: nothing applied.
    assert reloader.reload("again")
    assert len(applied.calls) == 1


def test_an_invalid_reload_keeps_the_running_settings(caplog: pytest.LogCaptureFixture) -> None:
    applied, refused = Applied(), []
    running = make(jwt_secret=OLD)
    too_short = "short-secret-value"
    reloader = SettingsReloader(
        running,
        lambda: make(jwt_secret=too_short),
        applied,
        on_refused=lambda: refused.append(1),
    )
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        assert not reloader.reload("SIGHUP")
    assert reloader.current is running
    assert applied.calls == [] and refused == [1]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.settings"]
    assert "JWT_SECRET" in line and too_short not in line


def test_settings_that_serving_refuses_are_refused_too() -> None:
    """A reload that would leave production without its metrics token."""
    running = make(
        environment="production", database_url="postgresql://d/o", metrics_token="m" * 24
    )
    reloader = SettingsReloader(
        running,
        lambda: make(environment="production", database_url="postgresql://d/o"),
        Applied(),
    )
    assert not reloader.reload("SIGHUP")
    assert reloader.current is running


def test_what_only_a_restart_applies_is_named_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    applied = Applied()
    reloader = SettingsReloader(
        make(port=8000, jwt_secret=OLD),
        lambda: make(port=9000, database_url="postgresql://u:pw-4ever@db/o", jwt_secret=OLD),
        applied,
    )
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        assert reloader.reload("SIGHUP")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.settings"]
    assert "DATABASE_URL, PORT" in line and "only a restart" in line
    assert "pw-4ever" not in line
    assert applied.calls == []
    assert reloader.current.port == 8000


def test_the_folders_signature_sees_a_data_swap_and_the_env_file(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "secrets")
    volume.write({"JWT_SECRET": OLD})
    env_file = tmp_path / ".env"
    before = _signature(volume.folder, env_file)
    assert _signature(volume.folder, env_file) == before
    volume.write({"JWT_SECRET": NEW})
    swapped = _signature(volume.folder, env_file)
    assert swapped != before
    env_file.write_text("RATE_LIMIT_BURST=5\n")
    assert _signature(volume.folder, env_file) != swapped
