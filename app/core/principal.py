"""Who is calling, as every component after authentication sees it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Principal:
    organization_id: uuid.UUID
    # The dashboard user's `sub`, or the API key's id.
    actor_id: str
    method: Literal["api_key", "jwt"]
    # Visible prefix of the API key, for logs; None for JWTs.
    key_prefix: str | None = None

    @property
    def rate_limit_key(self) -> str:
        return f"{self.method}:{self.organization_id}:{self.actor_id}"
