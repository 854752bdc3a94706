"""SmartGo sales -> safe image download -> image embeddings -> Iceberg table."""

import hashlib
import io
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Backoff,
    Config,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    Output,
    RetryPolicy,
    asset,
)
from pydantic import Field

from smartgo_analytics import checks
from smartgo_analytics.core import sales_table
from smartgo_analytics.core.imaging import BadImage, prepare_for_titan
from smartgo_analytics.core.sales import (
    QUARANTINE_SCHEMA,
    VALID_SALES_SCHEMA,
    Rejected,
    validate_sale,
)
from smartgo_analytics.layout import STAGING_PREFIX, image_key
from smartgo_analytics.local.stack import StackError
from smartgo_analytics.metadata import md_table
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.dynamodb import ExportProgressTracker
from smartgo_analytics.resources.embeddings import EmbeddingError, ImageEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.images import ImageFetcher, ImageFetchError
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.resources.postgres import SmartGoDatabase, SmartGoDatabaseError
from smartgo_analytics.settings import settings

GROUP = "pricing_intelligence"


@contextmanager
def permanent_errors(*kinds: type[Exception]):
    """Configuration problems fail the step at once: retrying a missing table only delays the alert."""
    try:
        yield
    except kinds as error:
        raise Failure(description=str(error), allow_retries=False) from None


IO_RETRY = RetryPolicy(
    max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
# One day per run: a backfill becomes many small runs, and the `bedrock` pool caps how many embed at once.
ONE_DAY_PER_RUN = BackfillPolicy.multi_run(1)


@asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"postgres"},
    io_manager_key="parquet_io_manager",
    retry_policy=IO_RETRY,
    backfill_policy=ONE_DAY_PER_RUN,
    check_specs=[checks.no_quarantined_rows],
)
def smartgo_sales(
    context: AssetExecutionContext,
    smartgo_db: SmartGoDatabase,
    object_store: ObjectStore,
    export_progress: ExportProgressTracker,
):
    """The day's SOLD products, validated; unusable rows are quarantined with a reason each."""
    start, end = context.partition_time_window
    export_progress.record(
        context.partition_key, "IN_PROGRESS", startedAt=datetime.now(UTC).isoformat()
    )
    valid, rejected = [], []
    with permanent_errors(SmartGoDatabaseError, StackError):
        for batch in smartgo_db.stream_sold_products(start, end):
            for row in batch:
                outcome = validate_sale(row)
                if isinstance(outcome, Rejected):
                    rejected.append({"product_id": outcome.product_id, "reason": outcome.reason})
                else:
                    valid.append(outcome)
    table = pa.Table.from_pylist(valid, schema=VALID_SALES_SCHEMA)
    reasons = Counter(r["reason"] for r in rejected)
    metadata = {
        "source_rows": len(valid) + len(rejected),
        "valid_rows": len(valid),
        "quarantined_rows": len(rejected),
        "window": f"[{start.isoformat()}, {end.isoformat()})",
    }
    if rejected:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rejected, schema=QUARANTINE_SCHEMA), buffer)
        key = f"{STAGING_PREFIX}/quarantine/smartgo_sales/{context.partition_key}.parquet"
        metadata["quarantine_uri"] = object_store.put_bytes(key, buffer.getvalue())
        metadata["quarantined_examples"] = md_table(rejected, ["product_id", "reason"])
    context.log.info(
        f"{context.partition_key}: {len(valid)} valid sales, {len(rejected)} quarantined"
    )
    yield Output(table, metadata=metadata)
    yield checks.quarantine_result(len(rejected), len(valid) + len(rejected), reasons)


class EmbeddingConfig(Config):
    max_error_ratio: float = Field(
        default_factory=lambda: settings().max_embedding_error_ratio,
        description="share of sales allowed to lack a vector before the day is blocked",
    )
    download_concurrency: int = Field(default_factory=lambda: settings().download_concurrency)


class _EmbedOnce:
    """Within one run, each distinct image (by sha256) is embedded once, whoever asks first."""

    def __init__(self, embedder: ImageEmbedder, known: dict[str, list[float]]):
        self._embedder = embedder
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        for sha, vector in known.items():
            future: Future = Future()
            future.set_result(vector)
            self._futures[sha] = future
        self.reused = set(known)
        self.calls = 0

    def __call__(self, sha: str, image: bytes) -> tuple[list[float], bool]:
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
        return future.result(), sha in self.reused


def _known_vectors(iceberg: IcebergCatalog, start, end, model_id: str) -> dict[str, list[float]]:
    day = iceberg.read_day(start, end, ("image_sha256", "embedding_model", "embedding_vector"))
    if day is None:
        return {}
    known = {}
    for sha, model, vector in zip(
        day.column("image_sha256").to_pylist(),
        day.column("embedding_model").to_pylist(),
        day.column("embedding_vector").to_pylist(),
        strict=True,
    ):
        if sha and vector is not None and model == model_id:
            known[sha] = vector
    return known


@asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"bedrock", "s3"},
    io_manager_key="parquet_io_manager",
    retry_policy=IO_RETRY,
    backfill_policy=ONE_DAY_PER_RUN,
    pool="bedrock",
    check_specs=[checks.embedding_error_ratio, checks.vector_length],
)
def product_image_embeddings(
    context: AssetExecutionContext,
    config: EmbeddingConfig,
    smartgo_sales: pa.Table,
    image_fetcher: ImageFetcher,
    image_embedder: ImageEmbedder,
    object_store: ObjectStore,
    iceberg: IcebergCatalog,
):
    """Every valid sale's image: downloaded safely, copied to object storage, embedded.

    A day whose images did not change makes no embedding calls: vectors already in the Iceberg table
    for the same image (sha256) and model are reused.
    """
    start, end = context.partition_time_window
    known = _known_vectors(iceberg, start, end, image_embedder.model_id)
    embed_once = _EmbedOnce(image_embedder, known)
    model_id = image_embedder.model_id

    def process(sale: dict) -> dict:
        result = {"product_id": sale["product_id"], "image_s3_key": None, "image_sha256": None,
                  "embedding_model": None, "embedding_vector": None, "embedding_error": None,
                  "embedding_reused": False}  # fmt: skip
        try:
            raw = image_fetcher.fetch(sale["image_url"])
            prepared = prepare_for_titan(raw)
            sha = hashlib.sha256(raw).hexdigest()
            result["image_sha256"] = sha
            key = image_key(sale["tenant_id"], sale["product_id"], sha, prepared.extension)
            result["image_s3_key"] = object_store.put_bytes(key, raw, f"image/{prepared.extension}")
            vector, reused = embed_once(sha, prepared.data)
            result.update(
                embedding_model=model_id, embedding_vector=vector, embedding_reused=reused
            )
        except ImageFetchError as error:
            result["embedding_error"] = f"image download failed: {error}"
        except BadImage as error:
            result["embedding_error"] = f"unusable image: {error}"
        except EmbeddingError as error:
            result["embedding_error"] = f"embedding failed: {error}"
        return result

    sales = smartgo_sales.select(["product_id", "tenant_id", "image_url"]).to_pylist()
    results = []
    with ThreadPoolExecutor(
        max_workers=config.download_concurrency, thread_name_prefix="image"
    ) as pool:
        for n, result in enumerate(pool.map(process, sales), start=1):
            results.append(result)
            if n % 500 == 0:
                context.log.info(f"{context.partition_key}: {n} of {len(sales)} images processed")

    table = pa.Table.from_pylist(results, schema=sales_table.EMBEDDINGS_SCHEMA)
    errors = [r for r in results if r["embedding_error"]]
    reasons = Counter(_reason_class(r["embedding_error"]) for r in errors)
    lengths = Counter(
        len(r["embedding_vector"]) for r in results if r["embedding_vector"] is not None
    )
    reused = sum(1 for r in results if r["embedding_reused"])
    context.log.info(
        f"{context.partition_key}: {len(results) - len(errors)} embedded, {len(errors)} errors, "
        f"{embed_once.calls} embedding calls, {reused} reused"
    )
    yield Output(
        table,
        metadata={
            "sales": len(results),
            "embedded": len(results) - len(errors),
            "errors": len(errors),
            "error_reasons": MetadataValue.md(checks.examples(reasons, 10)),
            "error_examples": md_table(errors, ["product_id", "embedding_error"]),
            "embedding_calls": embed_once.calls,
            "embeddings_reused": reused,
            "embedding_model": model_id,
            "estimated_bedrock_cost_usd": round(
                embed_once.calls * image_embedder.price_per_image, 6
            ),
        },
    )
    yield checks.error_ratio_result(len(errors), len(results), config.max_error_ratio, reasons)
    yield checks.vector_length_result(lengths, image_embedder.dimension)


def _reason_class(error: str) -> str:
    """A reason without the per-sale detail, for the histogram."""
    return error.split(" (after")[0].split(": ", 2)[-1] if error.count(": ") >= 2 else error


@asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"iceberg"},
    retry_policy=IO_RETRY,
    backfill_policy=ONE_DAY_PER_RUN,
    check_specs=[checks.iceberg_reconciles],
)
def smartgo_sales_iceberg(
    context: AssetExecutionContext,
    smartgo_sales: pa.Table,
    product_image_embeddings: pa.Table,
    iceberg: IcebergCatalog,
    image_embedder: ImageEmbedder,
    export_progress: ExportProgressTracker,
) -> MaterializeResult:
    """`pricing_intelligence.smartgo_sales`: the day's rows replaced in one atomic commit."""
    start, end = context.partition_time_window
    rows = sales_table.sales_rows(
        smartgo_sales,
        product_image_embeddings,
        image_embedder.dimension,
        datetime.now(UTC),
        settings().season_hemisphere,
    )
    table = iceberg.replace_day(rows, start, end)
    written = iceberg.read_day(start, end, ("product_id",))
    written_rows = written.num_rows if written is not None else 0
    errors = [e for e in rows.column("embedding_error").to_pylist() if e]
    snapshot = table.current_snapshot()
    export_progress.record(
        context.partition_key,
        "COMPLETE",
        totalCount=rows.num_rows,
        successCount=rows.num_rows - len(errors),
        errorCount=len(errors),
        errors=errors[:10] or None,
        completedAt=datetime.now(UTC).isoformat(),
    )
    return MaterializeResult(
        metadata={
            "table": sales_table.IDENTIFIER,
            "rows_written": rows.num_rows,
            "rows_with_vector": rows.num_rows - len(errors),
            "rows_with_error": len(errors),
            "snapshot_id": str(snapshot.snapshot_id) if snapshot else "",
            "table_location": table.location(),
            "preview": md_table(
                rows.select(
                    [
                        "product_id",
                        "tenant_id",
                        "category",
                        "sold_price",
                        "season",
                        "embedding_error",
                    ]
                )
                .slice(0, 5)
                .to_pylist(),
                ["product_id", "tenant_id", "category", "sold_price", "season", "embedding_error"],
            ),
        },
        check_results=[checks.reconciliation_result(written_rows, smartgo_sales.num_rows)],
    )
