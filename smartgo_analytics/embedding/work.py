"""The day's sales through the embedding step's work: in this process, or, when its first sales
say the day's CPU is worth it, the rest in worker processes (embedding/workers); results in the
sales' order, and what the run did besides (`Outcome`)."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from smartgo_analytics.core.embedding_day import Sale, mark_deferred
from smartgo_analytics.core.imaging import give_freed_memory_back
from smartgo_analytics.core.pacing import Pace
from smartgo_analytics.embedding.sale_work import FirstSales, Outcome, SaleWork
from smartgo_analytics.embedding.workers import in_workers, start_worker_server


@dataclass(frozen=True)
class ProcessRule:
    """When a day's sales go to worker processes: when the CPU they will cost is worth a pool's
    start (about a second). The cost is measured, not guessed from the number of sales: the first
    `probe_sales` run in this process, and their CPU per sale times the sales left is the estimate.
    A day of photos costs ~70 ms of CPU a sale, of drawings ~6 ms (the `embedding_throughput`
    benchmark), so 240 photos use the workers and 240 drawings do not. `min_cpu_s` 0: always."""

    processes: int
    min_cpu_s: float = 4.0
    probe_sales: int = 16
    decode_bound_ms: float = 25.0  # CPU per sale past which decoding, not the lock, bounds a worker


class SalesRun:
    """The day's sales through the work: iterating gives every item's result in the items' order,
    in this process or, past the `rule`'s first sales, in chunks over worker processes that divide
    the work's download and Bedrock bounds and share one `pace`; then `outcome` says what the run
    did besides."""

    def __init__(self, work: SaleWork, sales: list[Sale], rule: ProcessRule, pace: Pace):
        self.work, self.sales, self.rule, self.pace = work, sales, rule, pace
        self._outcome: Outcome | None = None

    def __iter__(self) -> Iterator[dict]:
        self._outcome = yield from _results(self.work, self.sales, self.rule, self.pace)

    @property
    def outcome(self) -> Outcome:
        if self._outcome is None:
            raise RuntimeError("the sales' run has not ended: its results are not all read")
        return self._outcome


class Feed:
    """The sales handed out one at a time until stopped: those handed out are run here, the rest
    are left for the worker processes."""

    def __init__(self, sales: list[Sale], stopped: bool = False):
        self.sales, self.given, self.stopped = sales, 0, stopped

    def __iter__(self) -> Iterator[Sale]:
        while self.given < len(self.sales) and not self.stopped:
            self.given += 1
            yield self.sales[self.given - 1]


class Probe:
    """The day's first sales, measured in this process: whether the rest is worth the worker
    processes (`pooled`), and how many of them (`processes`). While they are measured, only as
    many sales again are handed out ahead of them (`window`)."""

    def __init__(self, rule: ProcessRule, processes: int, work: SaleWork, sales: int):
        self.rule, self.processes, self.work = rule, processes, work
        self.sales = min(rule.probe_sales, sales)
        self.measured = processes <= 1 or rule.min_cpu_s <= 0
        self.pooled = processes > 1 and rule.min_cpu_s <= 0
        self.cpu_ms: float | None = None

    def window(self) -> int:
        return self.work.limits.threads * 4 if self.measured else max(self.sales, 1)

    def after(self, done: int, left: int) -> None:
        """Once `done` sales are back: decided, if the probe's sales are done, with `left` sales
        not handed out yet."""
        if self.measured or done < self.sales:
            return
        self.measured = True
        self.cpu_ms = self.work.cpu_s * 1000 / max(self.work.sales_done, 1)
        self.pooled = self.cpu_ms * left / 1000 >= self.rule.min_cpu_s
        if self.cpu_ms >= self.rule.decode_bound_ms:
            # Decoding photos releases the interpreter lock: a worker's threads use the cores,
            # and more workers than cores only add memory and contention.
            self.processes = min(self.processes, max(2, os.cpu_count() or 1))


def _results(
    work: SaleWork, sales: list[Sale], rule: ProcessRule, pace: Pace
) -> Generator[dict, None, Outcome]:
    # Each worker has at least one thread and one Bedrock call in flight.
    processes = min(rule.processes, work.limits.threads, work.image_embedder.max_concurrency)
    marked, repeated = mark_deferred(sales)
    first = FirstSales(repeated)
    # The day runs here, one stream of sales, until its first sales say what a sale costs; if the
    # rest is worth the workers, they take what has not been handed out yet.
    probe = Probe(rule, processes, work, len(sales))
    feed = Feed(sales, stopped=probe.pooled)
    try:
        for done, result in enumerate(work.run(feed, probe.window), start=1):
            yield first.complete(result)
            probe.after(done, len(sales) - feed.given)
            if probe.pooled and not feed.stopped:
                feed.stopped = True
                give_freed_memory_back()  # what the first photos took, before workers start
    finally:
        work.close()
    here = Outcome(
        embedding_calls=work.embedding_calls,
        first_sales_cpu_ms=probe.cpu_ms,
        outages=list(work.outages().values()),
    )
    if not (probe.pooled and feed.given < len(sales)):
        return here
    start_worker_server()
    pooled = yield from in_workers(work, marked[feed.given :], probe.processes, pace, first)
    in_step = [feed.given] if feed.given else []
    return Outcome(
        embedding_calls=here.embedding_calls + pooled.embedding_calls,
        processes=pooled.processes,
        first_sales_cpu_ms=probe.cpu_ms,
        sales_per_process=sorted([*pooled.sales_per_process, *in_step], reverse=True),
        outages=here.outages + pooled.outages,
    )
