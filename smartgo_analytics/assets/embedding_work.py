"""The per-sale work of `product_image_embeddings`: download safely, check, copy, embed.

Each sale costs a few milliseconds of client CPU (TLS, HTTP, request signing) while it waits a few
hundred on the network. The waiting is hidden by threads, but a process's threads share one
interpreter lock, so on a big day the lock, not the network, sets the pace. A day of many sales is
therefore split over worker processes, each with its own threads and clients, and their results
come back in the sales' order.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.forkserver
import threading
import traceback
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from dagster import ConfigurableResource

from smartgo_analytics.core.imaging import BadImage, prepare_for_titan
from smartgo_analytics.layout import UnsafeKey, image_key
from smartgo_analytics.resources.embeddings import EmbeddingError, ImageEmbedder
from smartgo_analytics.resources.images import ImageFetcher, ImageFetchError
from smartgo_analytics.resources.object_store import ObjectStore


def ordered_map(pool: ThreadPoolExecutor, fn, items: Iterable, window: int) -> Iterator:
    """`pool.map`, but with at most `window` items submitted ahead: a day of 100,000 images is not
    100,000 pending futures."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _EmbedOnce:
    """Within one process, each distinct image (by sha256) is embedded once, whoever asks first."""

    def __init__(self, embedder: ImageEmbedder):
        self._embedder = embedder
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.calls = 0

    def __call__(self, sha: str, image: bytes):
        with self._lock:
            future = self._futures.get(sha)
            owner = future is None
            if owner:
                future = self._futures[sha] = Future()
                self.calls += 1
        if owner:
            try:
                future.set_result(self._embedder.embed(image))
            except Exception as error:
                future.set_exception(error)
        return future.result()


@dataclass
class SaleWork:
    """What one sale needs, in a form that can be sent to a worker process.

    `known` are the images (sha256) whose vectors the table already holds for the day: their
    results come back with `embedding_reused` set and no vector (the table's stays).
    """

    image_fetcher: ImageFetcher
    object_store: ObjectStore
    image_embedder: ImageEmbedder
    known: frozenset[str]
    threads: int
    _embed_once: _EmbedOnce | None = field(default=None, init=False, repr=False)

    @property
    def embedding_calls(self) -> int:
        return self._embed_once.calls if self._embed_once else 0

    def __call__(self, item: tuple[dict, dict | None]) -> dict:
        """One sale and its previous download (or None): the result row, or a per-sale error."""
        sale, before = item
        model_id = self.image_embedder.model_id
        result = {"product_id": sale["product_id"], "image_s3_key": None, "image_sha256": None,
                  "embedding_model": None, "embedding_vector": None, "embedding_error": None,
                  "embedding_reused": False, "image_url": sale["image_url"], "image_etag": None}  # fmt: skip
        try:
            fetched = self.image_fetcher.fetch(
                sale["image_url"], if_none_match=before["image_etag"] if before else None
            )
            result["image_etag"] = fetched.etag
            if fetched.data is None:
                # Unchanged since the last materialisation: its copy and vector stand.
                result.update(image_sha256=before["image_sha256"], image_s3_key=before["image_s3_key"],
                              embedding_model=model_id, embedding_reused=True)  # fmt: skip
                return result
            raw = fetched.data
            prepared = prepare_for_titan(raw)
            sha = hashlib.sha256(raw).hexdigest()
            result["image_sha256"] = sha
            key = image_key(sale["tenant_id"], sale["product_id"], sha, prepared.extension)
            result["image_s3_key"] = self.object_store.put_bytes(
                key, raw, f"image/{prepared.extension}"
            )
            result["embedding_model"] = model_id
            if sha in self.known:
                result["embedding_reused"] = True
            elif sale.get(DEFERRED):  # another sale of this URL, elsewhere, is embedding it
                result[DEFERRED] = True
            else:
                result["embedding_vector"] = self._embedder()(sha, prepared.data)
        except ImageFetchError as error:
            result["embedding_error"] = f"image download failed: {error}"
        except BadImage as error:
            result["embedding_error"] = f"unusable image: {error}"
        except EmbeddingError as error:
            result["embedding_error"] = f"embedding failed: {error}"
        except UnsafeKey as error:
            result["embedding_error"] = f"image copy refused: {error}"
        return result

    def _embedder(self) -> _EmbedOnce:
        if self._embed_once is None:
            self._embed_once = _EmbedOnce(self.image_embedder)
        return self._embed_once

    def run(self, items: Iterable[tuple[dict, dict | None]]) -> Iterator[dict]:
        """Every item's result, in the items' order, `threads` at a time in this process."""
        self._embedder()
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="image") as pool:
            yield from ordered_map(pool, self, items, self.threads * 4)

    def share(self, worker: int, processes: int) -> SaleWork:
        """This work for worker number `worker` of `processes`: the workers' thread and Bedrock
        bounds add up to this work's."""

        def part(total: int) -> int:
            return total // processes + (worker < total % processes)

        embedder = self.image_embedder
        return replace(
            self,
            image_embedder=_rebuilt(embedder, max_concurrency=part(embedder.max_concurrency)),
            threads=part(self.threads),
        )

    # A worker gets the resources' settings and builds its own: clients, pools and locks stay here.
    def __getstate__(self) -> dict:
        state = self.__dict__ | {"_embed_once": None}
        for name in _RESOURCES:
            state[name] = _settings_of(state[name])
        return state

    def __setstate__(self, state: dict) -> None:
        for name in _RESOURCES:
            kind, fields = state[name]
            state[name] = kind(**fields)
        self.__dict__.update(state)


_RESOURCES = ("image_fetcher", "object_store", "image_embedder")


def _settings_of(resource: ConfigurableResource) -> tuple[type, dict]:
    return type(resource), {name: getattr(resource, name) for name in type(resource).model_fields}


def _rebuilt(resource: ConfigurableResource, **changes) -> ConfigurableResource:
    kind, fields = _settings_of(resource)
    return kind(**(fields | changes))


def _context():
    """Workers are forked from a server process that imported their code once (not from the step
    process, whose other threads may hold locks at fork time); spawned where there is no such server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["smartgo_analytics.assets.embedding_worker_server"])
    return context


def start_worker_server() -> None:
    """Start the server that workers are forked from now rather than at the first worker; it takes
    about as long as importing Dagster, once per process."""
    if _context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


class WorkerFailed(Exception):
    """A worker process crashed or raised; the message says how."""


def _worker(conn) -> None:
    """A worker process: its work and items arrive over `conn`; every item's result goes back in
    order, then the number of embedding calls made."""
    work = None
    try:
        work, items = conn.recv()  # building its resources can fail too: reported the same way
        for result in work.run(items):
            conn.send(result)
        conn.send(("done", work.embedding_calls))
    except BaseException:
        conn.send(("failed", traceback.format_exc(limit=8)))
    finally:
        if work is not None:
            work.image_fetcher.teardown_after_execution(None)
        conn.close()


@dataclass
class Outcome:
    """What a run of the work did besides its results."""

    embedding_calls: int = 0
    processes: int = 1
    sales_per_process: list[int] = field(default_factory=list)


# Marks a sale whose image URL an earlier sale of the day has: it is downloaded and copied where it
# is, and its vector is the earlier sale's, filled in when the results are merged.
DEFERRED = "embedding_deferred"


def assign_workers(urls: list[str], processes: int) -> tuple[list[int], dict[str, int]]:
    """A worker for each sale, and the index of each URL's first sale. A URL's first sale goes to
    the worker its URL hashes to, so each image is embedded by one worker once; every later sale of
    the URL goes to the next worker in turn, so a day whose sales share a few URLs still spreads
    its downloads and copies over every worker."""
    owner, first = [], {}
    turn = 0
    for index, url in enumerate(urls):
        if url not in first:
            first[url] = index
            owner.append(zlib.crc32(url.encode()) % processes)
        else:
            owner.append(turn % processes)
            turn += 1
    return owner, first


def _from_first_sale(result: dict, first: dict | None) -> dict:
    """A deferred sale's result completed with the vector (or error) of its URL's first sale."""
    if first is not None and first["image_sha256"] == result["image_sha256"]:
        if first["embedding_vector"] is not None or first["embedding_reused"]:
            return result | {"embedding_vector": first["embedding_vector"],
                             "embedding_reused": first["embedding_reused"]}  # fmt: skip
        if first["embedding_error"]:
            return result | {"embedding_error": first["embedding_error"]}
    return result | {
        "embedding_error": "embedding failed: the image's first sale of the day had other bytes "
        "or none; it is embedded on the next run"
    }


def run_sales(
    work: SaleWork, items: list[tuple[dict, dict | None]], processes: int, outcome: Outcome
) -> Iterator[dict]:
    """Every item's result in the items' order: in this process, or split over `processes` worker
    processes (see `assign_workers`): an image that several sales share is still embedded once."""
    # Each worker has at least one thread and one Bedrock call in flight.
    processes = min(processes, work.threads, work.image_embedder.max_concurrency)
    if processes <= 1:
        yield from work.run(items)
        outcome.embedding_calls = work.embedding_calls
        return
    context = _context()
    urls = [sale["image_url"] for sale, _ in items]
    owner, first = assign_workers(urls, processes)
    repeated = {urls[index] for index in range(len(urls)) if first[urls[index]] != index}
    shares: list[list] = [[] for _ in range(processes)]
    for index, ((sale, before), n) in enumerate(zip(items, owner, strict=True)):
        deferred = first[sale["image_url"]] != index
        shares[n].append(({**sale, DEFERRED: True}, before) if deferred else (sale, before))
    outcome.sales_per_process = [len(share) for share in shares]
    first_results: dict[str, dict] = {}
    workers, conns, finished = [], [], False
    try:
        for _ in shares:
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker, args=(theirs,), daemon=True)
            process.start()
            theirs.close()  # the worker holds the only other end: its exit ends our recv
            workers.append(process)
            conns.append(ours)
        # Sent once every worker is starting: they start side by side, not one after another.
        for worker, (conn, share) in enumerate(zip(conns, shares, strict=True)):
            try:
                conn.send((work.share(worker, processes), share))
            except OSError:  # it died starting: say how
                _receive(conn, workers[worker])
                raise
        for url, n in zip(urls, owner, strict=True):
            result = _receive(conns[n], workers[n])
            if result.pop(DEFERRED, False):
                result = _from_first_sale(result, first_results.get(url))
            elif url in repeated and url not in first_results:
                first_results[url] = result
            yield result
        for conn, process in zip(conns, workers, strict=True):
            outcome.embedding_calls += _receive(conn, process)
        outcome.processes = processes
        finished = True
    finally:
        for process in workers:
            process.join(timeout=5 if finished else 0)  # a step that failed does not wait for them
            if process.is_alive():
                process.kill()
                process.join()
        for conn in conns:
            conn.close()


def _receive(conn, process):
    try:
        message = conn.recv()
    except EOFError:
        process.join(timeout=5)
        raise WorkerFailed(
            f"embedding worker process {process.pid} exited with code {process.exitcode} "
            "before sending every result"
        ) from None
    if isinstance(message, tuple):
        kind, detail = message
        if kind == "failed":
            raise WorkerFailed(f"embedding worker process {process.pid} failed:\n{detail}")
        return detail
    return message
