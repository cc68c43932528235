"""Waiting for something to happen, within a bound.

No test sleeps for a fixed time and hopes a timer has fired by then: it waits for the event it
needs (a positive condition, checked every few milliseconds) and fails, naming what never
happened, once the bound has passed. The bound only turns a hang into a failure; a test that
claims a time limit passes that limit as the bound. "X did not happen" is never waited for:
such tests drive the component's injected clock instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

# Checking more often only costs CPU; the waits are for servers on this machine.
POLL_SECONDS = 0.01

Describe = str | Callable[[], str]


def _failure(what: Describe, within: float) -> AssertionError:
    # AssertionError, not pytest.fail: a BaseException raised inside a task or a thread would
    # escape the event loop instead of failing the test.
    said = what() if callable(what) else what
    return AssertionError(f"gave up after {within:.3g} s waiting until {said}")


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float,
    what: Describe,
    interval: float = POLL_SECONDS,
) -> None:
    """Return once `condition()` (a function or a coroutine function) is true; fail after
    `within` seconds. `what` says what was waited for (a function: evaluated at the failure,
    so it can show the state then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise _failure(what, within)
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], bool],
    *,
    within: float,
    what: Describe,
    interval: float = POLL_SECONDS,
) -> float:
    """`wait_until` for code that runs outside the event loop (a thread, a synchronous test);
    returns the seconds it took."""
    started = time.monotonic()
    deadline = started + within
    while not condition():
        if time.monotonic() >= deadline:
            raise _failure(what, within)
        time.sleep(interval)
    return time.monotonic() - started
