"""Faults that pass: a dependency's calls wait an outage out instead of failing what they were for.

A call that fails for a reason that may pass (a 5xx, throttling, a reset, a timeout, a refused
connection) raises `Transient`. Its `Outage` then holds every call to that dependency back until a
shared moment (the circuit is open), backing off while the failures go on, and tries the call
again; the first call that succeeds closes the circuit. A call that keeps failing while other
calls get through since it first failed is not waiting for an outage: after `own_window_s` of
failing, its error is its own (one image's URL that always answers 503). Only an outage longer
than the allowance ends the wait: `OutageTooLong` names the dependency, how long it was down and
why, and fails what the calls were part of (a step, which Dagster retries). A failure that will not pass (a 404,
not an image, a malformed answer) is never `Transient`: it is the caller's to report, at once.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
DEFAULT_ALLOWANCE_S = 600.0


class Transient(Exception):
    """A failure worth trying again later: the dependency, not the input, is at fault. A server
    that said when (`Retry-After`) sets `retry_after_s`: the circuit stays open at least that long."""

    retry_after_s: float | None = None


class OutageTooLong(Exception):
    """A dependency stayed unavailable longer than its allowance, or asked (`Retry-After`) to be
    left alone past it (`asked_s`)."""

    def __init__(
        self,
        dependency: str,
        down_s: float,
        allowance_s: float,
        reason: str,
        asked_s: float | None = None,
    ):
        super().__init__(dependency, down_s, allowance_s, reason)
        self.dependency, self.down_s, self.allowance_s, self.reason = (
            dependency,
            down_s,
            allowance_s,
            reason,
        )
        self.asked_s = asked_s

    def __str__(self) -> str:
        if self.asked_s is not None:
            asked = (
                "longer than can be told" if math.isinf(self.asked_s) else f"{self.asked_s:.0f} s"
            )
            return (
                f"{self.dependency} asked to be tried again in {asked} (Retry-After), past the "
                f"outage allowance of {self.allowance_s:.0f} s (OUTAGE_ALLOWANCE_S) after "
                f"{self.down_s:.0f} s down: not waited; last error: {self.reason}"
            )
        return (
            f"{self.dependency} was unavailable for {self.down_s:.0f} s, longer than the outage "
            f"allowance of {self.allowance_s:.0f} s (OUTAGE_ALLOWANCE_S); last error: {self.reason}"
        )


@dataclass(frozen=True)
class OutageReport:
    dependency: str
    retries: int  # calls tried again after a transient failure
    requeued: int  # calls that met at least one (each a sale, a read, ...)
    outage_s: float  # time from a first failure to the next success, summed
    outages: int


class Outage:
    """The state of one dependency's circuit, shared by the threads that call it.

    A call's failure becomes its own error only when it has kept failing for `own_window_s` (and
    `own_retries` tries) and the dependency answers meanwhile: another call got through since it
    first failed, or, with none to tell, a call that succeeded before answers again when made once
    more (the probe). A dependency that is down for everyone, at the start of the day or in the
    middle of it, is waited out. A dependency that has not answered any call yet is given
    `unproven_allowance_s` instead of the allowance when set (a host a few sales name, that may
    simply not exist). The circuit's pause doubles from `backoff_s` to `max_backoff_s` while probes
    fail, so a dependency that is back is tried again within `max_backoff_s`."""

    def __init__(
        self,
        dependency: str,
        allowance_s: float = DEFAULT_ALLOWANCE_S,
        own_retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        own_window_s: float = 30.0,
        unproven_allowance_s: float | None = None,
    ):
        self.dependency, self.allowance_s, self.own_retries = dependency, allowance_s, own_retries
        self.own_window_s, self.unproven_allowance_s = own_window_s, unproven_allowance_s
        self._successes = 0
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._down_since: float | None = None  # when the current outage began
        self._resume_at = 0.0  # no call before this while the circuit is open
        self._failures = 0  # probes in a row that failed
        self._paused_at = -1.0
        self._retries = self._requeued = self._outages = 0
        self._outage_s = 0.0
        self._last_good: Callable[[], object] | None = None  # a call that succeeded: the probe

    def call(self, fn: Callable[[], T]) -> T:
        """fn(), tried again after each Transient failure until it succeeds or the outage has
        lasted longer than the allowance (OutageTooLong), or until it is its own error: others
        succeeded since it first failed, and it kept failing for `own_window_s` (raised)."""
        met, tries = False, 0
        first_failed_at, successes_then = 0.0, 0
        while True:
            self._wait_for_circuit()
            started = self._clock()
            try:
                result = fn()
            except Transient as error:
                asked = error.retry_after_s
                allowance = self._allowance()
                down = self._failed(started, None if asked is None else min(asked, allowance))
                if down > allowance:
                    raise OutageTooLong(self.dependency, down, allowance, str(error)) from None
                if asked is not None and down + asked > allowance:
                    raise OutageTooLong(
                        self.dependency, down, allowance, str(error), asked
                    ) from None
                now = self._clock()
                if not met:
                    first_failed_at, successes_then = now, self._successes
                tries += 1
                if tries > self.own_retries and now - first_failed_at >= self.own_window_s:
                    if self._successes > successes_then:
                        raise
                    # None other to tell: a call that succeeded before is made again. Its success
                    # counts, so that this call, tried once more, is its own error if it fails.
                    self._probe()
                with self._lock:
                    self._retries += 1
                    if not met:
                        self._requeued += 1
                met = True
                if tries > self.own_retries and self._successes > successes_then:
                    # Others get through and this one does not: it backs off on its own too (in an
                    # outage for everyone, the circuit's pause alone paces the calls).
                    pause = self.backoff_s * 2 ** min(tries - self.own_retries, 16)
                    self._sleep(min(self.max_backoff_s, pause) * random.uniform(0.5, 1.0))
                continue
            self._succeeded(fn)
            return result

    def _probe(self) -> None:
        """Make a call that succeeded before again; if the dependency answers it, that counts as a
        success. With no other call in flight, it tells a failing call's own fault (the day's last
        image, whose URL always answers 503) from an outage."""
        with self._lock:
            probe = self._last_good
        if probe is None:
            return
        try:
            probe()
        except Transient:
            return
        except Exception:  # an answer, if not a usable one: the dependency is up
            pass
        self._succeeded(probe)

    def _allowance(self) -> float:
        with self._lock:
            proven = self._successes > 0
        if proven or self.unproven_allowance_s is None:
            return self.allowance_s
        return min(self.allowance_s, self.unproven_allowance_s)

    def _wait_for_circuit(self) -> None:
        with self._lock:
            wait = self._resume_at - self._clock()
        if wait > 0:
            self._sleep(wait)

    def _failed(self, started: float, at_least_s: float | None = None) -> float:
        """Open the circuit (or keep it open, backing off further); how long it has been down.
        Calls already in flight when the circuit last paused fail with it: only a call made after
        that pause (a probe) backs the circuit off further."""
        with self._lock:
            now = self._clock()
            if self._down_since is None:
                self._down_since, self._failures, self._paused_at = now, 0, -1.0
                self._outages += 1
            if started >= self._paused_at:
                self._failures += 1
                pause = min(self.max_backoff_s, self.backoff_s * 2 ** min(self._failures - 1, 16))
                self._resume_at = now + max(pause * random.uniform(0.5, 1.0), at_least_s or 0.0)
                self._paused_at = now
            return now - self._down_since

    def _succeeded(self, fn: Callable[[], object]) -> None:
        with self._lock:
            self._successes += 1
            self._last_good = fn
            if self._down_since is not None:
                self._outage_s += self._clock() - self._down_since
                self._down_since, self._failures, self._resume_at = None, 0, 0.0

    def report(self) -> OutageReport:
        with self._lock:
            return OutageReport(
                self.dependency,
                self._retries,
                self._requeued,
                round(self._outage_s, 1),
                self._outages,
            )
