"""The one retry helper: exponential backoff with full jitter, and a give-up that says so.

Three shapes of "try again", one backoff:
- `call_with_retries`: an operation that raises a retryable error (a timeout, a commit conflict);
- `retry_until`: an attempt that answers None while the world is not ready for it (a conditional
  write that met another writer's);
- `drain`: a batch call that hands back what it did not process (DynamoDB's unprocessed items).
Each gives up after its attempts with `GaveUp` (or, for `call_with_retries`, the last error with a
note), naming what was tried and how often, so a give-up is never silent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


class GaveUp(RuntimeError):
    """A retried call ran out of attempts; the message says what was tried and how often."""


def backoff_delays(retries: int, base_s: float, rng: random.Random | None = None) -> list[float]:
    """Delays before each retry: base, 2*base, 4*base ... each scaled by a jitter in [0.5, 1.0]."""
    rng = rng or random.Random()
    return [base_s * (2**attempt) * rng.uniform(0.5, 1.0) for attempt in range(retries)]


def capped_delays(attempts: int, base_s: float, cap_s: float) -> list[float]:
    """The backoff delays between `attempts` tries, each at most `cap_s`."""
    return [min(cap_s, delay) for delay in backoff_delays(max(attempts - 1, 0), base_s)]


def call_with_retries(
    operation: Callable[[], T],
    retryable: Callable[[Exception], bool],
    retries: int,
    base_s: float,
    sleep: Callable[[float], None] = time.sleep,
    *,
    what: str | None = None,
) -> T:
    """Run `operation`; on a retryable exception wait and try again, at most `retries` more times.
    The last error is raised with a note of the attempts made (and of `what` was tried)."""
    delays = backoff_delays(retries, base_s)
    for attempt, delay in enumerate([*delays, None], start=1):
        try:
            return operation()
        except Exception as error:
            if not retryable(error):
                raise
            if delay is None:
                error.add_note(f"gave up after {attempt} attempts" + (f": {what}" if what else ""))
                raise
            sleep(delay)
    raise AssertionError("unreachable")


def retry_until(
    attempt: Callable[[int], T | None],
    *,
    attempts: int,
    base_s: float,
    gave_up: str,
    cap_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`attempt(number)`'s first answer other than None (None: not this time, try again after a
    backoff; `number` counts from 1); GaveUp(`gave_up`, with the attempts made) when none of
    `attempts` answered."""
    delays = capped_delays(attempts, base_s, cap_s)
    for number, delay in enumerate([*delays, None], start=1):
        answer = attempt(number)
        if answer is not None:
            return answer
        if delay is not None:
            sleep(delay)
    raise GaveUp(f"{gave_up} (gave up after {attempts} attempts)")


def drain(
    send: Callable[[list[P]], tuple[Sequence[R], list[P]]],
    pending: list[P],
    *,
    attempts: int,
    base_s: float,
    gave_up: str,
    cap_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[R]:
    """Everything `send` answered for the pending items, sending again what it handed back
    unprocessed (`send(items) -> (answers, left over)`) after a backoff; GaveUp(`gave_up`, with
    how many items were left) when items are still left after `attempts` sends."""
    answers: list[R] = []
    for delay in [*capped_delays(attempts, base_s, cap_s), None]:
        if not pending:
            break
        answered, pending = send(pending)
        answers.extend(answered)
        if pending and delay is not None:
            sleep(delay)
    if pending:
        raise GaveUp(f"{gave_up}: {len(pending)} left after {attempts} attempts")
    return answers


def poll(look: Callable[[], T | None], interval_s: float, sleep=time.sleep) -> T:
    """`look()` every `interval_s` until it answers something other than None (a long job that
    ends on its own time: no give-up here; the job has its own limit)."""
    while True:
        seen = look()
        if seen is not None:
            return seen
        sleep(interval_s)
