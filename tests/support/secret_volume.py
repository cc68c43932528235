"""A secrets folder laid out as Kubernetes mounts a Secret: each key a symlink to `..data/<key>`,
`..data` a symlink to a timestamped folder, and an update that writes a new folder and swaps
`..data` atomically (what kubelet does, and what a watch on one file misses)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


class SecretVolume:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, values: dict[str, str]) -> None:
        """The Secret's new content, swapped in at once (keys not given disappear)."""
        version = self.folder / f"..{uuid.uuid4().hex}"
        version.mkdir()
        for name, value in values.items():
            (version / name).write_text(value)
        staged = self.folder / "..data_tmp"
        os.symlink(version.name, staged)
        os.replace(staged, self.folder / "..data")
        for name in values:
            link = self.folder / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        for link in self.folder.iterdir():
            if link.is_symlink() and link.name not in values and not link.name.startswith(".."):
                link.unlink()
