"""The B2 emulator as the tests drive it: its request log, clock and fault switches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.constants import B2_KEY


@dataclass
class Emulator:
    url: str
    # The admin endpoints need the emulator's application key.
    key: str = B2_KEY

    @property
    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def requests(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/_emulator/requests", headers=self._admin)
        log: list[dict[str, Any]] = response.raise_for_status().json()
        return log

    def calls(self, api_name: str) -> int:
        return sum(1 for r in self.requests() if r["path"].endswith("/" + api_name))

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_emulator/requests", headers=self._admin).raise_for_status()

    def advance_clock(self, seconds: float) -> None:
        httpx.post(
            f"{self.url}/_emulator/clock", json={"advanceSeconds": seconds}, headers=self._admin
        ).raise_for_status()

    def inject(self, **faults: Any) -> None:
        """status=503, delaySeconds=2, malformed=True, apis=[...], count=N (see the emulator)."""
        httpx.post(
            f"{self.url}/_emulator/faults", json=faults, headers=self._admin
        ).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/_emulator/faults", headers=self._admin).raise_for_status()

    def add_key(self, key_id: str, key: str) -> None:
        """Another application key, as an operator creates one to rotate to."""
        httpx.post(
            f"{self.url}/_emulator/keys", json={"keyId": key_id, "key": key}, headers=self._admin
        ).raise_for_status()

    def delete_key(self, key_id: str) -> None:
        httpx.delete(f"{self.url}/_emulator/keys/{key_id}", headers=self._admin).raise_for_status()

    def key_behind(self, download_token: str) -> str:
        """The application key that asked for a download authorization."""
        response = httpx.get(f"{self.url}/_emulator/grants/{download_token}", headers=self._admin)
        key_id: str = response.raise_for_status().json()["keyId"]
        return key_id

    def expire_account_tokens(self) -> None:
        httpx.post(
            f"{self.url}/_emulator/expire-account-tokens", headers=self._admin
        ).raise_for_status()
