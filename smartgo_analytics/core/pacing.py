"""Pacing calls to a quota that several processes share: one schedule in shared memory."""

from __future__ import annotations

import math
import multiprocessing
import time
from dataclasses import dataclass

# Slots of the shared schedule.
(_NEXT, _SLOW, _CALLS, _THROTTLED, _FIRST, _LAST, _TOKENS, _CHARGED, _ESTIMATE, _PROBING) = range(
    10
)


@dataclass(frozen=True)
class PaceReport:
    calls: int
    throttled: int
    calls_per_minute: float | None
    quota_per_minute: float | None
    tokens: int = 0  # charged, as the answers reported them
    tokens_per_minute: float | None = None
    token_quota_per_minute: float | None = None

    @property
    def ratio_to_quota(self) -> float | None:
        if not self.quota_per_minute or self.calls_per_minute is None:
            return None
        return self.calls_per_minute / self.quota_per_minute

    @property
    def ratio_to_token_quota(self) -> float | None:
        if not self.token_quota_per_minute or self.tokens_per_minute is None:
            return None
        return self.tokens_per_minute / self.token_quota_per_minute


class Pace:
    """Spaces calls to a requests-per-minute quota, a tokens-per-minute quota, or both, however
    many threads and processes share it: each call takes the next free slot of one schedule (kept
    in shared memory) and sleeps until it.

    Requests: slots at least 60 / `requests_per_minute` seconds apart. Tokens: a call's charge is
    known only from its answer (`charged`), so each slot is spaced by the charge expected (the
    mean of the answers so far) and the schedule is moved by the difference once the answer tells
    the real one; until the first answer tells a charge, one call goes at a time. A throttled
    answer widens the spacing by SLOWER and pushes the next slot back; every answer that is not
    throttled narrows it by FASTER, never below the quota's. Quotas are aimed at with HEADROOM, so
    that calls sent on time but arriving a little early still fit. Without a quota it only counts.

    `processes` is the multiprocessing context its shared memory comes from (the worker pool's).
    Pass it to worker processes when they are started (as ProcessPoolExecutor's initargs)."""

    SLOWER = 1.25
    FASTER = 0.99
    HEADROOM = 0.97
    LONGEST_SLOWDOWN = 64
    PROBE_PATIENCE_S = 60.0  # longer than a call's answer takes (BedrockEmbedder: 3 x 25 s at most)

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        processes=multiprocessing,
    ):
        for name, quota in (("requests", requests_per_minute), ("tokens", tokens_per_minute)):
            if quota is not None and quota <= 0:
                raise ValueError(f"{name} per minute must be positive, got {quota}")
        self.quota_per_minute = requests_per_minute
        self.token_quota_per_minute = tokens_per_minute
        self._per_call = 60 / (requests_per_minute * self.HEADROOM) if requests_per_minute else 0.0
        self._per_token = 60 / (tokens_per_minute * self.HEADROOM) if tokens_per_minute else 0.0
        self._state = processes.Array("d", [0.0, 1.0, 0, 0, 0.0, 0.0, 0, 0, -1.0, -math.inf])

    def _spacing(self, state) -> float:
        """Seconds between two slots now: the stricter quota, slowed while throttled."""
        tokens = max(state[_ESTIMATE], 0.0) * self._per_token
        return max(self._per_call, tokens) * state[_SLOW]

    def wait(self, clock=time.monotonic, sleep=time.sleep) -> None:
        """Block until this call's slot (CLOCK_MONOTONIC is one clock for every process)."""
        state = self._state
        while True:
            with state.get_lock():
                now = clock()
                # A token quota with no charge known yet: one call goes alone to learn it (another
                # goes if its answer has not come in PROBE_PATIENCE_S: its process may be gone).
                learning = self._per_token and state[_ESTIMATE] < 0
                if not (learning and now - state[_PROBING] < self.PROBE_PATIENCE_S):
                    if learning:
                        state[_PROBING] = now
                    slot = max(state[_NEXT], now)
                    state[_NEXT] = slot + self._spacing(state)
                    state[_CALLS] += 1
                    if state[_CALLS] == 1:
                        state[_FIRST] = slot
                    state[_LAST] = slot
                    break
            sleep(0.01)
        if slot > now:
            sleep(slot - now)

    def answered(self, throttled: bool, tokens: int | None = None, clock=time.monotonic) -> None:
        """An answer came: `throttled` or not, and the `tokens` it says the call was charged (None
        when it says nothing of a charge: an error; 0 for a success that names none)."""
        state = self._state
        with state.get_lock():
            if tokens is not None and tokens >= 0:
                expected = max(state[_ESTIMATE], 0.0)
                state[_TOKENS] += tokens
                state[_CHARGED] += 1
                state[_ESTIMATE] = state[_TOKENS] / state[_CHARGED]
                # The slot after this call was spaced for the charge expected: move it by the
                # difference, so the schedule follows what was really charged.
                state[_NEXT] += (tokens - expected) * self._per_token * state[_SLOW]
            # Any answer ends a probe; when it told no charge, the next call probes again.
            state[_PROBING] = -math.inf
            if throttled:
                state[_THROTTLED] += 1
                if self._per_call or self._per_token:
                    state[_SLOW] = min(state[_SLOW] * self.SLOWER, self.LONGEST_SLOWDOWN)
                    state[_NEXT] = max(state[_NEXT], clock() + self._spacing(state))
            else:
                state[_SLOW] = max(1.0, state[_SLOW] * self.FASTER)

    def unanswered(self) -> None:
        """A call got no answer (a reset, a timeout): let another call learn the charge."""
        with self._state.get_lock():
            self._state[_PROBING] = -math.inf

    def report(self) -> PaceReport:
        state = self._state
        with state.get_lock():
            calls, throttled = int(state[_CALLS]), int(state[_THROTTLED])
            span = state[_LAST] - state[_FIRST]
            tokens = int(state[_TOKENS])
        # n calls span n - 1 intervals
        per_minute = (calls - 1) * 60 / span if calls > 1 and span > 0 else None
        tokens_per_minute = (
            tokens * (calls - 1) / calls * 60 / span if calls > 1 and span > 0 else None
        )
        return PaceReport(
            calls,
            throttled,
            per_minute,
            self.quota_per_minute,
            tokens,
            tokens_per_minute,
            self.token_quota_per_minute,
        )
