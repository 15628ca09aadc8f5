"""Polling with deadlines: the only way these tests wait for anything."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(
    fn: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `fn` until it returns a truthy value; return that value or raise TimeoutError.

    The interval backs off gently up to 0.5 s. The last exception raised by `fn` (if any)
    is reported, so a failing poll says why.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_val = None
    delay = interval
    while True:
        try:
            last_val = fn()
            if last_val:
                return last_val
            last_exc = None
        except AssertionError as e:  # assertion-style polls
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_exc!r}" if last_exc else f"; last value: {last_val!r}"
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
