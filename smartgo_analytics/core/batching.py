"""Calls from many threads, answered a batch at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any


class Batched:
    """`batched(key, item)` from any thread returns `answer(batch)[key]` (None if absent), where
    `batch` holds every key (with its item) asked for while the batch was open: its first caller
    keeps it open `wait_s`, or until it holds `most` keys, then asks `answer` once for all of them.
    A key asked twice in one batch is answered once. An exception from `answer` is raised in every
    caller of the batch."""

    def __init__(
        self, answer: Callable[[dict[Hashable, Any]], dict], wait_s: float = 0.15, most: int = 100
    ):
        self._answer = answer
        self._wait_s = wait_s
        self._most = most
        self._lock = threading.Lock()
        self._open: dict[Hashable, tuple[Any, Future]] | None = None
        self._full = threading.Event()

    def __call__(self, key: Hashable, item: Any = None) -> Any:
        with self._lock:
            leader = self._open is None
            if self._open is None:
                self._open, self._full = {}, threading.Event()
            batch, full = self._open, self._full
            _, future = batch.setdefault(key, (item, Future()))
            if len(batch) >= self._most:
                full.set()
        if leader:
            full.wait(self._wait_s)
            with self._lock:
                self._open = None
            try:
                answers = self._answer({k: entry[0] for k, entry in batch.items()})
            except BaseException as error:
                for _, waiting in batch.values():
                    waiting.set_exception(error)
            else:
                for k, (_, waiting) in batch.items():
                    waiting.set_result(answers.get(k))
        return future.result()


class WriteBehind:
    """Items written `most` at a time by whichever thread adds the last of a batch, the rest by
    `flush`; until written, `pending` finds them."""

    def __init__(self, write: Callable[[dict], None], most: int = 25):
        self._write = write
        self._most = most
        self._lock = threading.Lock()
        self._pending: dict = {}

    def add(self, key: Hashable, item: Any) -> None:
        with self._lock:
            self._pending[key] = item
            full = dict(self._pending) if len(self._pending) >= self._most else None
        if full:
            self._written(full)

    def pending(self, key: Hashable) -> Any:
        with self._lock:
            return self._pending.get(key)

    def flush(self) -> None:
        with self._lock:
            rest = dict(self._pending)
        if rest:
            self._written(rest)

    def _written(self, items: dict) -> None:
        self._write(items)
        with self._lock:
            for key in items:
                self._pending.pop(key, None)
