"""One sale's work in `product_image_embeddings`: download safely, check, copy, embed; a
process's sales `limits.threads` at a time, each image embedded once."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from smartgo_analytics.core.batching import Batched, WriteBehind
from smartgo_analytics.core.embedding_day import DEFERRED, Sale, from_first_sale
from smartgo_analytics.core.imaging import (
    DOWNLOAD_MEMORY_BUDGET,
    BadImage,
    DecodeBudget,
    prepare_for,
    return_freed_pixels_to_the_os,
)
from smartgo_analytics.core.outage import Outage, OutageReport, OutageTooLong
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


@dataclass(frozen=True)
class SaleLimits:
    """How a process's share of the sales is bounded."""

    threads: int  # sales at a time (downloads)
    outage_allowance_s: float = 600.0
    # CDN hosts too few sales name for their loss to exceed the error budget (`minor_hosts`): their
    # outage is those sales' errors, not the day's, and one no call reached is given `own_window_s`.
    minor_hosts: frozenset[str] = frozenset()
    # How long one sale's call keeps failing while others get through before it is its own error.
    own_window_s: float = 30.0


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
    limits: SaleLimits
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

    def __call__(self, sale: Sale) -> dict:
        """One sale: the result row, or a per-sale error."""
        started = time.thread_time()
        try:
            return self._sale(sale)
        finally:  # this thread's CPU for the sale: what the day's first sales are measured by
            spent = time.thread_time() - started
            with self._lock:
                self.cpu_s += spent
                self.sales_done += 1

    def _sale(self, sale: Sale) -> dict:
        before = sale.before
        model_id = self.image_embedder.model_id
        result: dict[str, Any] = {
            "product_id": sale.product_id,
            "image_s3_key": None,
            "image_sha256": None,
            "embedding_model": None,
            "embedding_vector": None,
            "embedding_error": None,
            "embedding_reused": False,
            "image_url": sale.image_url,
            "image_etag": None,
        }
        try:
            etag = before.image_etag if before else None
            fetched = self._download(sale.image_url, etag)
            result["image_etag"] = fetched.etag
            if fetched.data is None:
                # Unchanged since the last materialisation: its copy and vector stand.
                assert before is not None  # only a download that sent an ETag is answered so
                result.update(
                    image_sha256=before.image_sha256,
                    image_s3_key=before.image_s3_key,
                    embedding_model=model_id,
                    embedding_reused=True,
                )
                return result
            try:  # the downloaded bytes are let go once copied: the embedding needs the prepared
                prepared = prepare_for(fetched.data, self.image_embedder.image_rule)
                sha = hashlib.sha256(fetched.data).hexdigest()
                # The copy is the downloaded file, named and typed by its own format.
                source = prepared.source_format
                key = image_key(sale.tenant_id, sale.product_id, sha, source.extension)
                result["image_s3_key"] = self.object_store.put_bytes(
                    key, fetched.data, source.content_type
                )
            finally:
                self.downloads.give(fetched.held)
            result.update(image_sha256=sha, embedding_model=model_id)
            if sale.deferred:  # another sale of this URL, elsewhere, is embedding it
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
            return self._outage(f"CDN {host}", minor=host in self.limits.minor_hosts).call(
                lambda: self.image_fetcher.fetch(url, if_none_match=etag, budget=self.downloads)
            )
        except OutageTooLong as error:
            if host not in self.limits.minor_hosts:
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
                    self.limits.outage_allowance_s,
                    own_window_s=self.limits.own_window_s,
                    unproven_allowance_s=self.limits.own_window_s if minor else None,
                )
            return self._outages[dependency]

    def outages(self) -> dict[str, OutageReport]:
        with self._lock:
            return {name: outage.report() for name, outage in self._outages.items()}

    def run(self, sales: Iterable[Sale], window=None) -> Iterator[dict]:
        """Every sale's result, in the sales' order, `threads` at a time in this process (at most
        `window` ahead, a number or a function, if given)."""
        threads = self.limits.threads
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image")
        try:
            yield from ordered_map(self._pool, self, sales, window or threads * 4)
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
