"""The embedding step's worker processes: a big day's sales in chunks over a
`ProcessPoolExecutor`, whose workers build their own clients from the resources' settings (a
process's threads share one interpreter lock, which on a big day sets the pace); results come back
in the sales' order."""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.forkserver
import os
import signal
from collections import Counter, deque
from collections.abc import Generator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from dagster import ConfigurableResource

from smartgo_analytics.core.embedding_day import Sale
from smartgo_analytics.core.imaging import (
    DECODE_MEMORY_BUDGET,
    DOWNLOAD_MEMORY_BUDGET,
    DecodeBudget,
    give_freed_memory_back,
    use_decode_budget,
)
from smartgo_analytics.core.outage import OutageReport, OutageTooLong
from smartgo_analytics.core.pacing import Pace
from smartgo_analytics.embedding.sale_work import FirstSales, Outcome, SaleLimits, SaleWork


class WorkerFailed(Exception):
    """A worker process crashed or raised; the message says how."""


def settings_of(resource: ConfigurableResource, **changes) -> tuple[type, dict]:
    """What a worker builds its own copy of a resource from: clients, pools and locks stay here."""
    return type(resource), {n: getattr(resource, n) for n in type(resource).model_fields} | changes


_work: SaleWork | None = None  # in a worker process: its share of the work
_setup_error: BaseException | None = None


def _start_worker(
    settings: list[tuple[type, dict]],
    limits: SaleLimits,
    pace: Pace,
    budgets: tuple[DecodeBudget, DecodeBudget],
) -> None:
    """ProcessPoolExecutor's initializer: the worker's resources, built from their settings. A
    failure is kept and raised by the worker's first chunk, with its traceback, not lost in a log."""
    global _work, _setup_error
    try:
        fetcher, store, embedder, vectors = (kind(**fields) for kind, fields in settings)
        embedder.use_pace(pace)
        decodes, downloads = budgets
        use_decode_budget(decodes)
        _work = SaleWork(
            image_fetcher=fetcher,
            object_store=store,
            image_embedder=embedder,
            image_vectors=vectors,
            limits=limits,
            downloads=downloads,
        )
    except BaseException as error:
        _setup_error = error


def _run_chunk(sales: list[Sale]) -> tuple[int, list[dict], int, dict]:
    """This worker's process id, the chunk's results in order, the embedding calls they cost and
    the worker's outages so far."""
    if _setup_error is not None:
        raise _setup_error
    work = _work
    if work is None:
        raise RuntimeError("the embedding worker process was not set up")
    calls = work.embedding_calls
    results = list(work.run(sales))
    give_freed_memory_back()
    return os.getpid(), results, work.embedding_calls - calls, work.outages()


def worker_context():
    """Workers are forked from a server process that imported their code once (not from the step
    process, whose other threads may hold locks at fork time); spawned where there is no such server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["smartgo_analytics.embedding.worker_server"])
    return context


def start_worker_server() -> None:
    """Start the server that workers are forked from now rather than at the first worker; it takes
    about as long as importing Dagster, once per process."""
    if worker_context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


def in_workers(
    work: SaleWork,
    sales: list[Sale],
    processes: int,
    pace: Pace,
    first: FirstSales,
) -> Generator[dict, None, Outcome]:
    """The sales' results in their order, run in chunks by `processes` worker processes that
    divide the work's download and Bedrock bounds and share one `pace`; then what they did."""
    limits = replace(work.limits, threads=max(1, work.limits.threads // processes))
    settings = [
        settings_of(work.image_fetcher),
        settings_of(work.object_store),
        settings_of(
            work.image_embedder,
            max_concurrency=max(1, work.image_embedder.max_concurrency // processes),
        ),
        settings_of(work.image_vectors),
    ]
    # Each worker waits for a chunk's slowest sale before it starts the next: chunks as large as
    # its threads' window, at least two per worker so that they end about together.
    size = max(1, min(limits.threads * 4, math.ceil(len(sales) / (processes * 2))))
    chunks = [sales[n : n + size] for n in range(0, len(sales), size)]
    per_process: Counter[int] = Counter()
    outages: dict[int, dict[str, OutageReport]] = {}
    calls = 0
    before = set(multiprocessing.active_children())
    workers: set = set()
    pool = ProcessPoolExecutor(
        processes,
        mp_context=worker_context(),
        initializer=_start_worker,
        initargs=(
            settings,
            limits,
            pace,
            # One budget of decoded pixels and one of downloaded bytes for every worker together.
            (
                DecodeBudget(DECODE_MEMORY_BUDGET, worker_context()),
                DecodeBudget(DOWNLOAD_MEMORY_BUDGET, worker_context(), "download"),
            ),
        ),
    )
    finished = False
    try:
        pending: deque[Future] = deque()
        for n, chunk in enumerate(chunks, start=1):
            pending.append(pool.submit(_run_chunk, chunk))
            workers |= set(multiprocessing.active_children()) - before
            # Done chunks wait while an earlier one is slow, at most 4 a worker.
            while pending and (len(pending) >= 4 * processes or n == len(chunks)):
                pid, results, used, reports = pending.popleft().result()
                per_process[pid] += len(results)
                outages[pid] = reports
                calls += used
                for result in results:
                    yield first.complete(result)
        finished = True
    except BrokenProcessPool:
        pool.shutdown(wait=True)  # every worker has ended: their exit codes are known
        raise WorkerFailed(_how_workers_ended(workers, processes)) from None
    except OutageTooLong:
        raise
    except Exception as error:
        raise WorkerFailed(f"an embedding worker process failed: {error!r}") from error
    finally:
        if not finished:  # a step that failed does not wait for its workers' other chunks
            pool.shutdown(wait=False, cancel_futures=True)
            for process in workers:
                process.kill()
        pool.shutdown(wait=True)
    return Outcome(
        embedding_calls=calls,
        processes=processes,
        sales_per_process=list(per_process.values()),
        outages=[report for reports in outages.values() for report in reports.values()],
    )


def _how_workers_ended(workers: set, processes: int) -> str:
    """Which worker ended on its own (the pool stops the others with SIGTERM), and how."""
    ended = [p for p in workers if p.exitcode not in (None, -signal.SIGTERM)] or list(workers)
    said = []
    for process in ended:
        code = process.exitcode
        how = (
            f"was killed by signal {-code} ({signal.Signals(-code).name})"
            if code and code < 0
            else f"exited with code {code}"
        )
        said.append(f"embedding worker process {process.pid} {how}")
    return (
        "; ".join(said)
        + f" before sending every result ({len(ended)} of {processes} workers; the others "
        "were stopped). A worker killed by signal 9 is usually the kernel's out-of-memory killer."
    )
