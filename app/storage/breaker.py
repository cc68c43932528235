"""A circuit breaker for B2: after `threshold` consecutive failures, B2 is not called for
`cooldown` seconds, so requests get 503 at once instead of each tying up a thread until its
deadline. Then one trial call is let through; its success closes the breaker, its failure opens
it again. Used from the event loop only, so it needs no lock."""

from __future__ import annotations

from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown: float, monotonic: Callable[[], float]) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._monotonic = monotonic
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._monotonic() - self.opened_at >= self.cooldown:
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

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial_running = False

    def record_failure(self) -> None:
        self.failures += 1
        if self._trial_running or self.failures >= self.threshold:
            self.opened_at = self._monotonic()
        self._trial_running = False
