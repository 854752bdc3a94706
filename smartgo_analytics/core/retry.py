"""The one retry helper: exponential backoff with full jitter."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delays(retries: int, base_s: float, rng: random.Random | None = None) -> list[float]:
    """Delays before each retry: base, 2*base, 4*base ... each scaled by a jitter in [0.5, 1.0]."""
    rng = rng or random.Random()
    return [base_s * (2**attempt) * rng.uniform(0.5, 1.0) for attempt in range(retries)]


def call_with_retries(
    operation: Callable[[], T],
    retryable: Callable[[Exception], bool],
    retries: int,
    base_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `operation`; on a retryable exception wait and try again, at most `retries` more times."""
    delays = backoff_delays(retries, base_s)
    for delay in [*delays, None]:
        try:
            return operation()
        except Exception as error:
            if delay is None or not retryable(error):
                raise
            sleep(delay)
    raise AssertionError("unreachable")
