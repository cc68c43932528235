"""Settings that change while the service runs: the secrets and the limits, read again from
their file sources (SECRETS_DIR, `.env`) on SIGHUP and by themselves within
SETTINGS_RELOAD_SECONDS of a change in SECRETS_DIR.

Kubernetes replaces a mounted Secret by swapping the folder's `..data` symlink, which a watch on
one file misses: the whole folder is polled (names, link targets, sizes, times). A reload whose
values fail validation keeps the running settings and says which setting, never its value; what
only a restart can change (the database, the ports, the workers) is named in one warning line.
Each component applies what changed at once, as a whole: a request uses either the old values
or the new, and one already on its way (a B2 call, say) finishes with what it started with.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from app.core.settings import (
    ConfigurationError,
    Settings,
    describe_invalid_settings,
    secrets_dir,
)

logger = logging.getLogger("app.settings")

RELOADABLE = frozenset(
    {
        "jwt_secret",
        "jwt_previous_secrets",
        "b2_application_key_id",
        "b2_application_key",
        "s3_access_key_id",
        "s3_secret_access_key",
        "metrics_token",
        "shared_state_secret",
        "rate_limit_per_minute",
        "rate_limit_burst",
    }
)


def load_settings() -> Settings:
    """The settings as a fresh process would read them now."""
    return Settings(_secrets_dir=secrets_dir())


class SettingsReloader:
    def __init__(
        self,
        settings: Settings,
        load: Callable[[], Settings],
        apply: Callable[[Settings, frozenset[str]], None],
        *,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.current = settings
        self._load = load
        self._apply = apply
        self._on_refused = on_refused
        self.reloads = 0

    def reload(self, reason: str) -> bool:
        """Read the settings again and apply what changed; False when they were refused."""
        try:
            fresh = self._load()
            fresh.check_serving()
        except ValidationError as exc:
            return self._refused(reason, describe_invalid_settings(exc))
        except ConfigurationError as exc:
            return self._refused(reason, str(exc))
        changed = frozenset(
            name for name in RELOADABLE if getattr(fresh, name) != getattr(self.current, name)
        )
        fixed = sorted(
            name.upper()
            for name in Settings.model_fields
            if name not in RELOADABLE and getattr(fresh, name) != getattr(self.current, name)
        )
        if fixed:
            logger.warning(
                "settings reload (%s): %s changed, which only a restart applies",
                reason,
                ", ".join(fixed),
            )
        if changed:
            updated = self.current.model_copy(
                update={name: getattr(fresh, name) for name in changed}
            )
            self._apply(updated, changed)
            self.current = updated
            logger.info(
                "settings reloaded (%s): %s", reason, ", ".join(sorted(n.upper() for n in changed))
            )
        self.reloads += 1
        return True

    def _refused(self, reason: str, problem: str) -> bool:
        if self._on_refused is not None:
            self._on_refused()
        logger.warning(
            "settings reload (%s) refused, the running settings stay: %s", reason, problem
        )
        return False

    async def watch(self, folder: Path | None, interval: float) -> None:
        """Reload whenever SECRETS_DIR or `.env` changes, checked every `interval` seconds."""
        env_file = Path(".env")
        seen = _signature(folder, env_file)
        while True:
            await asyncio.sleep(interval)
            now = _signature(folder, env_file)
            if now != seen:
                seen = now
                self.reload("a settings file changed")


def _signature(folder: Path | None, env_file: Path) -> tuple[object, ...]:
    """What changes when a file of the folder (or the `.env`) changes, a symlink swap included."""
    entries: list[object] = [_stat(env_file)]
    if folder is not None:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            names = []
        for name in names:
            path = folder / name
            target = os.readlink(path) if path.is_symlink() else None
            entries.append((name, target, _stat(path)))
    return tuple(entries)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)
