"""Calls from many threads, answered a batch at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any


class Batched:
    """`batched(key, item)` from any thread returns `answer(batch)[key]` (None if absent), where
    `batch` holds every key (with its item) asked for while the batch was open: its first caller
    keeps it open `wait_s`, then asks `answer` once for all of them. A key asked twice in one batch
    is answered once. An exception from `answer` is raised in every caller of the batch."""

    def __init__(self, answer: Callable[[dict[Hashable, Any]], dict], wait_s: float = 0.005):
        self._answer = answer
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._open: dict[Hashable, tuple[Any, Future]] | None = None

    def __call__(self, key: Hashable, item: Any = None) -> Any:
        with self._lock:
            leader = self._open is None
            if leader:
                self._open = {}
            batch = self._open
            _, future = batch.setdefault(key, (item, Future()))
        if leader:
            time.sleep(self._wait_s)
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
