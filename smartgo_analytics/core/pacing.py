"""Pacing calls to a quota that several processes share: one schedule in shared memory."""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass

_NEXT, _INTERVAL, _BASE, _CALLS, _THROTTLED, _FIRST, _LAST = range(7)


@dataclass(frozen=True)
class PaceReport:
    calls: int
    throttled: int
    calls_per_minute: float | None
    quota_per_minute: float | None

    @property
    def ratio_to_quota(self) -> float | None:
        if not self.quota_per_minute or self.calls_per_minute is None:
            return None
        return self.calls_per_minute / self.quota_per_minute


class Pace:
    """Spaces calls at least 60 / `requests_per_minute` seconds apart, however many threads and
    processes share it: each call takes the next free slot of one schedule (kept in shared memory)
    and sleeps until it. A throttled answer widens the spacing by SLOWER and pushes the next slot
    back; every answer that is not throttled narrows it by FASTER, never below the quota's. The
    quota is aimed at with HEADROOM, so that calls sent on time but arriving a little early still
    fit. Without a quota it only counts calls and throttled answers.

    Pass it to worker processes when they are started (as ProcessPoolExecutor's initargs)."""

    SLOWER = 1.25
    FASTER = 0.99
    HEADROOM = 0.97

    def __init__(self, requests_per_minute: float | None = None, context=multiprocessing):
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests per minute must be positive, got {requests_per_minute}")
        self.quota_per_minute = requests_per_minute
        base = 60 / (requests_per_minute * self.HEADROOM) if requests_per_minute else 0.0
        self._state = context.Array("d", [0.0, base, base, 0.0, 0.0, 0.0, 0.0])

    def wait(self, clock=time.monotonic, sleep=time.sleep) -> None:
        """Block until this call's slot (CLOCK_MONOTONIC is one clock for every process)."""
        state = self._state
        with state.get_lock():
            now = clock()
            slot = max(state[_NEXT], now)
            state[_NEXT] = slot + state[_INTERVAL]
            state[_CALLS] += 1
            if state[_CALLS] == 1:
                state[_FIRST] = slot
            state[_LAST] = slot
        if slot > now:
            sleep(slot - now)

    def answered(self, throttled: bool, clock=time.monotonic) -> None:
        state = self._state
        with state.get_lock():
            if throttled:
                state[_THROTTLED] += 1
                if state[_BASE]:
                    state[_INTERVAL] = min(state[_INTERVAL] * self.SLOWER, state[_BASE] * 64)
                    state[_NEXT] = max(state[_NEXT], clock() + state[_INTERVAL])
            else:
                state[_INTERVAL] = max(state[_BASE], state[_INTERVAL] * self.FASTER)

    def report(self) -> PaceReport:
        state = self._state
        with state.get_lock():
            calls, throttled = int(state[_CALLS]), int(state[_THROTTLED])
            span = state[_LAST] - state[_FIRST]
        # n calls span n - 1 intervals
        per_minute = (calls - 1) * 60 / span if calls > 1 and span > 0 else None
        return PaceReport(calls, throttled, per_minute, self.quota_per_minute)
