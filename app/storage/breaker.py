"""A circuit breaker for B2: after `threshold` consecutive failures, B2 is not called for
`cooldown` seconds, so requests get 503 at once instead of each tying up a thread until its
deadline. Then one trial call is let through; its success closes the breaker, its failure opens
it again. A throttling answer (429/503 with Retry-After) opens it at once, for the time B2 asked
for but never longer than `cooldown`. Used from the event loop only, so it needs no lock."""

from __future__ import annotations

import math
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown: float, monotonic: Callable[[], float]) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._monotonic = monotonic
        self.failures = 0
        # While set, B2 is not called before this time.
        self.closed_until: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self.closed_until is None:
            return "closed"
        if self._monotonic() >= self.closed_until:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until B2 will be tried again (at least 1)."""
        if self.closed_until is None:
            return 1
        return max(1, math.ceil(self.closed_until - self._monotonic()))

    def record_success(self) -> None:
        self.failures = 0
        self.closed_until = None
        self._trial_running = False

    def record_failure(self, retry_after: float | None = None) -> None:
        """An availability failure; `retry_after`: B2 asked to wait that long (throttling)."""
        self.failures += 1
        if retry_after is not None:
            self._open(min(max(retry_after, 0.0), self.cooldown))
        elif self._trial_running or self.failures >= self.threshold:
            self._open(self.cooldown)
        self._trial_running = False

    def record_neutral(self) -> None:
        """A call that says nothing about B2's availability (a refusal for one file or bucket,
        the caller going away): it neither counts as a failure nor holds the trial slot."""
        self._trial_running = False

    def _open(self, seconds: float) -> None:
        self.closed_until = self._monotonic() + seconds
