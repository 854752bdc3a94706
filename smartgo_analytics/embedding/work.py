"""The per-sale work of `product_image_embeddings`: download safely, check, copy, embed.

Each sale costs a few milliseconds of client CPU (TLS, HTTP, request signing) while it waits a few
hundred on the network. The waiting is hidden by threads, but a process's threads share one
interpreter lock, so on a big day the lock, not the network, sets the pace. A day of many sales is
therefore split into chunks run by a `ProcessPoolExecutor`, whose workers build their own clients
from the resources' settings; results come back in the sales' order.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
from dagster import ConfigurableResource

from smartgo_analytics.core.batching import Batched, WriteBehind
from smartgo_analytics.core.embedding_day import DEFERRED, from_first_sale, mark_deferred
from smartgo_analytics.core.imaging import (
    DECODE_MEMORY_BUDGET,
    DOWNLOAD_MEMORY_BUDGET,
    BadImage,
    DecodeBudget,
    give_freed_memory_back,
    prepare_for_titan,
    return_freed_pixels_to_the_os,
    use_decode_budget,
)
from smartgo_analytics.core.outage import Outage, OutageReport, OutageTooLong
from smartgo_analytics.core.pacing import Pace
from smartgo_analytics.layout import UnsafeKey, image_key
from smartgo_analytics.resources.dynamodb import ImageVectors
from smartgo_analytics.resources.embeddings import EmbeddingError, ImageEmbedder
from smartgo_analytics.resources.images import ImageFetcher, ImageFetchError
from smartgo_analytics.resources.object_store import ObjectStore


def ordered_map(pool: ThreadPoolExecutor, fn, items: Iterable, window) -> Iterator:
    """`pool.map`, but with at most `window` items submitted ahead (a number, or a function giving
    it as it goes): a day of 100,000 images is not 100,000 pending futures."""
    ahead = window if callable(window) else lambda: window
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        while len(pending) >= ahead():
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass
class SaleWork:
    """Download, check, copy and embed one sale's image, `threads` sales at a time. An image whose
    vector the image vectors hold (asked for a batch of images at a time) is not embedded: its
    result is `embedding_reused`, without a vector (the table's row gets the stored one). A new
    one is embedded once however many sales show it at the same time, then stored.

    Downloads (per CDN host) and embedding calls wait out an outage of their server, up to
    `outage_allowance_s` (core/outage): a transient failure is tried again, never a sale's error."""

    image_fetcher: ImageFetcher
    object_store: ObjectStore
    image_embedder: ImageEmbedder
    image_vectors: ImageVectors
    threads: int
    outage_allowance_s: float = 600.0
    # CDN hosts too few sales name for their loss to exceed the error budget (`minor_hosts`): their
    # outage is those sales' errors, not the day's, and one no call reached is given `own_window_s`.
    minor_hosts: frozenset[str] = frozenset()
    # How long one sale's call keeps failing while others get through before it is its own error.
    own_window_s: float = 30.0
    embedding_calls: int = 0
    cpu_s: float = 0.0  # the CPU its sales took, in their own threads
    sales_done: int = 0
    # Downloaded bytes and Bedrock requests in flight: this process's own budget, or one that every
    # worker process shares.
    downloads: DecodeBudget = field(
        default_factory=lambda: DecodeBudget(DOWNLOAD_MEMORY_BUDGET, what="download")
    )
    _in_flight: dict[str, Future] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        return_freed_pixels_to_the_os()  # before the first download's buffers
        self._outages: dict[str, Outage] = {}
        model_id, dimension = self.image_embedder.model_id, self.image_embedder.dimension
        vectors = self.image_vectors
        self._stored = Batched(
            lambda shas: dict.fromkeys(vectors.known(model_id, dimension, shas), True)
        )
        self._new = WriteBehind(lambda new: vectors.store(model_id, dimension, new))

    def __call__(self, item: tuple[dict, dict | None]) -> dict:
        """One sale and its previous download (or None): the result row, or a per-sale error."""
        started = time.thread_time()
        try:
            return self._sale(item)
        finally:  # this thread's CPU for the sale: what the day's first sales are measured by
            spent = time.thread_time() - started
            with self._lock:
                self.cpu_s += spent
                self.sales_done += 1

    def _sale(self, item: tuple[dict, dict | None]) -> dict:
        sale, before = item
        model_id = self.image_embedder.model_id
        result = {
            "product_id": sale["product_id"],
            "image_s3_key": None,
            "image_sha256": None,
            "embedding_model": None,
            "embedding_vector": None,
            "embedding_error": None,
            "embedding_reused": False,
            "image_url": sale["image_url"],
            "image_etag": None,
        }
        try:
            etag = before["image_etag"] if before else None
            fetched = self._download(sale["image_url"], etag)
            result["image_etag"] = fetched.etag
            if fetched.data is None:
                # Unchanged since the last materialisation: its copy and vector stand.
                assert before is not None  # only a download that sent an ETag is answered so
                result.update(
                    image_sha256=before["image_sha256"],
                    image_s3_key=before["image_s3_key"],
                    embedding_model=model_id,
                    embedding_reused=True,
                )
                return result
            try:  # the downloaded bytes are let go once copied: the embedding needs the prepared
                prepared = prepare_for_titan(fetched.data)
                sha = hashlib.sha256(fetched.data).hexdigest()
                # The copy is the downloaded file, named and typed by its own format.
                source = prepared.source_format
                key = image_key(sale["tenant_id"], sale["product_id"], sha, source.extension)
                result["image_s3_key"] = self.object_store.put_bytes(
                    key, fetched.data, source.content_type
                )
            finally:
                self.downloads.give(fetched.held)
            result.update(image_sha256=sha, embedding_model=model_id)
            if sale.get(DEFERRED):  # another sale of this URL, elsewhere, is embedding it
                result[DEFERRED] = True
            else:
                vector = self._vector(sha, prepared.data)
                result.update(embedding_vector=vector, embedding_reused=vector is None)
        except ImageFetchError as error:
            result["embedding_error"] = f"image download failed: {error}"
        except BadImage as error:
            result["embedding_error"] = f"unusable image: {error}"
        except EmbeddingError as error:
            result["embedding_error"] = f"embedding failed: {error}"
        except UnsafeKey as error:
            result["embedding_error"] = f"image copy refused: {error}"
        return result

    def _download(self, url: str, etag: str | None):
        host = _host(url)
        try:
            return self._outage(f"CDN {host}", minor=host in self.minor_hosts).call(
                lambda: self.image_fetcher.fetch(url, if_none_match=etag, budget=self.downloads)
            )
        except OutageTooLong as error:
            if host not in self.minor_hosts:
                raise  # the day's CDN: the step fails, naming it
            raise ImageFetchError(str(error)) from None

    def _vector(self, sha: str, image: bytes) -> np.ndarray | None:
        """A new image's vector, to be stored; None if the image vectors had it already."""
        with self._lock:
            future = self._in_flight.get(sha)
            owner = future is None
            if future is None:
                future = self._in_flight[sha] = Future()
        if owner:
            try:
                vector = self._new.pending(sha)
                stored = bool(self.image_vectors.table_name) and self._stored(sha)
                if vector is None and not stored:
                    with self._lock:
                        self.embedding_calls += 1
                    # The request's base64 and its body, held as the downloads are.
                    with self.downloads.hold(3 * len(image)):
                        vector = self._outage("Bedrock").call(
                            lambda: self.image_embedder.embed(image)
                        )
                    self._new.add(sha, vector)
                future.set_result(vector)
            except BaseException as error:
                future.set_exception(error)
            finally:
                with self._lock:  # from now on the image vectors answer for it
                    del self._in_flight[sha]
        return future.result()

    def _outage(self, dependency: str, minor: bool = False) -> Outage:
        with self._lock:
            if dependency not in self._outages:
                self._outages[dependency] = Outage(
                    dependency,
                    self.outage_allowance_s,
                    own_window_s=self.own_window_s,
                    unproven_allowance_s=self.own_window_s if minor else None,
                )
            return self._outages[dependency]

    def outages(self) -> dict[str, OutageReport]:
        with self._lock:
            return {name: outage.report() for name, outage in self._outages.items()}

    def run(self, items: Iterable[tuple[dict, dict | None]], window=None) -> Iterator[dict]:
        """Every item's result, in the items' order, `threads` at a time in this process (at most
        `window` ahead, a number or a function, if given)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="image")
        try:
            yield from ordered_map(self._pool, self, items, window or self.threads * 4)
        finally:  # the vectors made before an outage ended the step are kept for its retry
            self._new.flush()

    def close(self) -> None:
        """Stop its threads (a worker process's stop with the process), and store the vectors of
        calls that were still in flight when a failure ended the work: a retry does not pay for
        them again."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)  # waits for the calls in flight
            self._pool = None
        self._new.flush()


def minor_hosts(urls: list[str], max_error_ratio: float) -> frozenset[str]:
    """The hosts whose sales, all lost, would stay within the error budget."""
    counts = Counter(_host(url) for url in urls)
    return frozenset(h for h, n in counts.items() if n <= max_error_ratio * len(urls))


def _host(url: str) -> str:
    """The server a URL names (`host`, or `host:port` with a port): each has its own circuit."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "?", parts.port
    except Exception:  # not a URL: its fetch says why
        return "?"
    return f"{host}:{port}" if port else host


@dataclass
class Outcome:
    """What a run of the work did besides its results."""

    embedding_calls: int = 0
    processes: int = 1
    first_sales_cpu_ms: float | None = None  # CPU per sale of the first sales, in this process
    sales_per_process: list[int] = field(default_factory=list)
    outages: list[OutageReport] = field(default_factory=list)  # per dependency and process

    def outage_figures(self) -> dict[str, dict]:
        """Per dependency: calls tried again, sales they were for, seconds it was down."""
        figures: dict[str, dict] = {}
        for report in self.outages:
            mine = figures.setdefault(
                report.dependency, {"retries": 0, "requeued": 0, "outage_s": 0.0}
            )
            mine["retries"] += report.retries
            mine["requeued"] += report.requeued
            mine["outage_s"] = max(
                mine["outage_s"], report.outage_s
            )  # processes wait it out together
        return figures


class WorkerFailed(Exception):
    """A worker process crashed or raised; the message says how."""


def _settings_of(resource: ConfigurableResource, **changes) -> tuple[type, dict]:
    """What a worker builds its own copy of a resource from: clients, pools and locks stay here."""
    return type(resource), {n: getattr(resource, n) for n in type(resource).model_fields} | changes


_work: SaleWork | None = None  # in a worker process: its share of the work
_setup_error: BaseException | None = None


def _start_worker(
    settings: list[tuple[type, dict]],
    threads: int,
    pace: Pace,
    allowance_s: float,
    minor: frozenset[str],
    own_window_s: float,
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
            fetcher,
            store,
            embedder,
            vectors,
            threads,
            allowance_s,
            minor,
            own_window_s,
            downloads=downloads,
        )
    except BaseException as error:
        _setup_error = error


def _run_chunk(items: list[tuple[dict, dict | None]]) -> tuple[int, list[dict], int, dict]:
    """This worker's process id, the chunk's results in order, the embedding calls they cost and
    the worker's outages so far."""
    if _setup_error is not None:
        raise _setup_error
    work = _work
    if work is None:
        raise RuntimeError("the embedding worker process was not set up")
    calls = work.embedding_calls
    results = list(work.run(items))
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

    def __init__(
        self, work: SaleWork, items: list[tuple[dict, dict | None]], rule: ProcessRule, pace: Pace
    ):
        self.work, self.items, self.rule, self.pace = work, items, rule, pace
        self._outcome: Outcome | None = None

    def __iter__(self) -> Iterator[dict]:
        self._outcome = yield from _results(self.work, self.items, self.rule, self.pace)

    @property
    def outcome(self) -> Outcome:
        if self._outcome is None:
            raise RuntimeError("the sales' run has not ended: its results are not all read")
        return self._outcome


@dataclass
class FirstSales:
    """The results of the first sale of each repeated image URL, which complete the later sales'
    results that a worker marked DEFERRED."""

    repeated: set[str]
    first: dict[str, dict] = field(default_factory=dict)

    def complete(self, result: dict) -> dict:
        url = result["image_url"]
        if result.pop(DEFERRED, False):
            return from_first_sale(result, self.first.get(url))
        if url in self.repeated and url not in self.first:
            self.first[url] = result
        return result


class Feed:
    """The items handed out one at a time until stopped: those handed out are run here, the rest
    are left for the worker processes."""

    def __init__(self, items: list[tuple[dict, dict | None]], stopped: bool = False):
        self.items, self.given, self.stopped = items, 0, stopped

    def __iter__(self) -> Iterator[tuple[dict, dict | None]]:
        while self.given < len(self.items) and not self.stopped:
            self.given += 1
            yield self.items[self.given - 1]


def _results(
    work: SaleWork, items: list[tuple[dict, dict | None]], rule: ProcessRule, pace: Pace
) -> Generator[dict, None, Outcome]:
    # Each worker has at least one thread and one Bedrock call in flight.
    processes = min(rule.processes, work.threads, work.image_embedder.max_concurrency)
    marked, repeated = mark_deferred(items)
    first = FirstSales(repeated)
    # The day runs here, one stream of sales, until its first sales say what a sale costs; if the
    # rest is worth the workers, they take what has not been handed out yet.
    feed = Feed(items, stopped=processes > 1 and rule.min_cpu_s <= 0)
    measured = processes <= 1 or rule.min_cpu_s <= 0
    cpu_ms: float | None = None
    pooled = feed.stopped
    done = 0
    probe = min(rule.probe_sales, len(items))
    # While the first sales are measured, only as many again are handed out ahead of them.

    def window() -> int:
        return work.threads * 4 if measured else max(probe, 1)

    try:
        for result in work.run(feed, window):
            yield first.complete(result)
            done += 1
            if not measured and done >= probe:
                measured = True
                cpu_ms = work.cpu_s * 1000 / max(work.sales_done, 1)
                rest = len(items) - feed.given
                pooled = feed.stopped = cpu_ms * rest / 1000 >= rule.min_cpu_s
                if pooled:
                    give_freed_memory_back()  # what the first photos took, before workers start
                if cpu_ms >= rule.decode_bound_ms:
                    # Decoding photos releases the interpreter lock: a worker's threads use the
                    # cores, and more workers than cores only add memory and contention.
                    processes = min(processes, max(2, os.cpu_count() or 1))
    finally:
        work.close()
    outcome = Outcome(embedding_calls=work.embedding_calls, first_sales_cpu_ms=cpu_ms)
    outcome.outages = list(work.outages().values())
    if pooled and feed.given < len(items):
        start_worker_server()
        pool_outcome = yield from _in_workers(work, marked[feed.given :], processes, pace, first)
        outcome.processes = pool_outcome.processes
        outcome.embedding_calls += pool_outcome.embedding_calls
        in_step = [feed.given] if feed.given else []
        outcome.sales_per_process = sorted(
            [*pool_outcome.sales_per_process, *in_step], reverse=True
        )
        outcome.outages += pool_outcome.outages
    return outcome


def _in_workers(
    work: SaleWork,
    marked: list[tuple[dict, dict | None]],
    processes: int,
    pace: Pace,
    first: FirstSales,
) -> Generator[dict, None, Outcome]:
    outcome = Outcome()
    threads = max(1, work.threads // processes)
    settings = [
        _settings_of(work.image_fetcher),
        _settings_of(work.object_store),
        _settings_of(
            work.image_embedder,
            max_concurrency=max(1, work.image_embedder.max_concurrency // processes),
        ),
        _settings_of(work.image_vectors),
    ]
    # Each worker waits for a chunk's slowest sale before it starts the next: chunks as large as
    # its threads' window, at least two per worker so that they end about together.
    size = max(1, min(threads * 4, math.ceil(len(marked) / (processes * 2))))
    chunks = (marked[n : n + size] for n in range(0, len(marked), size))
    per_process: Counter[int] = Counter()
    outages: dict[int, dict[str, OutageReport]] = {}
    before = set(multiprocessing.active_children())
    workers: set = set()
    pool = ProcessPoolExecutor(
        processes,
        mp_context=worker_context(),
        initializer=_start_worker,
        initargs=(
            settings,
            threads,
            pace,
            work.outage_allowance_s,
            work.minor_hosts,
            work.own_window_s,
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
        for chunk in chunks:
            pending.append(pool.submit(_run_chunk, chunk))
            workers |= set(multiprocessing.active_children()) - before
            if len(pending) >= 4 * processes:  # done chunks wait while an earlier one is slow
                yield from _chunk_results(pending.popleft(), first, outcome, per_process, outages)
        while pending:
            yield from _chunk_results(pending.popleft(), first, outcome, per_process, outages)
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
    outcome.processes = processes
    outcome.sales_per_process = list(per_process.values())
    outcome.outages = [report for reports in outages.values() for report in reports.values()]
    return outcome


def _chunk_results(
    future: Future,
    first: FirstSales,
    outcome: Outcome,
    per_process: Counter[int],
    outages: dict[int, dict[str, OutageReport]],
) -> Iterator[dict]:
    pid, results, calls, reports = future.result()
    per_process[pid] += len(results)
    outages[pid] = reports
    outcome.embedding_calls += calls
    for result in results:
        yield first.complete(result)


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
