"""SmartGo sales -> safe image download -> image embeddings -> Iceberg table."""

import io
import os
import tempfile
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
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
from smartgo_analytics.assets.embedding_work import (
    Outcome,
    SaleWork,
    run_sales,
    start_worker_server,
)
from smartgo_analytics.core import sales_table
from smartgo_analytics.core.sales import (
    QUARANTINE_SCHEMA,
    VALID_SALES_SCHEMA,
    Rejected,
    keep_latest_sale,
    validate_sale,
)
from smartgo_analytics.layout import STAGING_PREFIX, asset_output_key
from smartgo_analytics.metadata import location, md_table
from smartgo_analytics.metadata import reasons as reason_list
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.dynamodb import ExportProgressTracker
from smartgo_analytics.resources.embeddings import ImageEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog, KnownVectors
from smartgo_analytics.resources.images import ImageFetcher
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
# Rows per Iceberg append: reading nested vectors back from Parquet costs several times their size.
ICEBERG_BATCH_ROWS = 4_000
PREVIEW_COLUMNS = ["product_id", "tenant_id", "category", "sold_price", "season", "embedding_error"]


@asset(
    owners=settings().asset_owners,
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
    batches, rejected = [], []
    with permanent_errors(SmartGoDatabaseError):
        for rows in smartgo_db.stream_sold_products(start, end):
            valid = []
            for row in rows:
                outcome = validate_sale(row)
                if isinstance(outcome, Rejected):
                    rejected.append({"product_id": outcome.product_id, "reason": outcome.reason})
                else:
                    valid.append(outcome)
            # Arrow per fetched batch: a big day never sits in memory as Python objects.
            batches.append(pa.RecordBatch.from_pylist(valid, schema=VALID_SALES_SCHEMA))
    table = pa.Table.from_batches(batches, schema=VALID_SALES_SCHEMA).combine_chunks()
    table, duplicates = keep_latest_sale(table)
    rejected += [{"product_id": d.product_id, "reason": d.reason} for d in duplicates]
    reasons = Counter(r["reason"] for r in rejected)
    metadata = {
        "source_rows": table.num_rows + len(rejected),
        "valid_rows": table.num_rows,
        "quarantined_rows": len(rejected),
        "duplicate_product_ids": len(duplicates),
        "window": f"[{start.isoformat()}, {end.isoformat()})",
    }
    if rejected:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rejected, schema=QUARANTINE_SCHEMA), buffer)
        key = f"{STAGING_PREFIX}/quarantine/smartgo_sales/{context.partition_key}.parquet"
        metadata["quarantine_uri"] = location(object_store.put_bytes(key, buffer.getvalue()))
        metadata["quarantined_examples"] = md_table(rejected, ["product_id", "reason"])
    context.log.info(
        f"{context.partition_key}: {table.num_rows} valid sales, {len(rejected)} quarantined"
    )
    yield Output(table, metadata=metadata)
    yield checks.quarantine_result(len(rejected), table.num_rows + len(rejected), reasons)


class EmbeddingConfig(Config):
    max_error_ratio: float = Field(
        default_factory=lambda: settings().max_embedding_error_ratio,
        description="share of sales allowed to lack a vector before the day is blocked",
    )
    download_concurrency: int = Field(default_factory=lambda: settings().download_concurrency)
    worker_processes: int = Field(
        default_factory=lambda: settings().embedding_worker_processes,
        description="processes the day's sales are split over (each has its own interpreter lock)",
    )
    worker_min_sales: int = Field(
        default=1_000,
        description="smaller days stay in the step's process (a worker takes ~1 s to start)",
    )
    batch_rows: int = Field(default=1_000, description="results per Parquet batch")


def _reusable_images(
    iceberg: IcebergCatalog, start: datetime, end: datetime, embedder: ImageEmbedder
) -> frozenset[str]:
    """The images (sha256) the table holds a vector of for the day, from this model and of the
    configured length. Read from small columns, not the vectors: a row has its vector exactly when
    it has no error."""
    columns = ("image_sha256", "embedding_model", "embedding_dimension", "embedding_error")
    day = iceberg.read_day(start, end, columns)
    if day is None:
        return frozenset()
    usable = pc.and_(
        pc.and_(
            pc.equal(day.column("embedding_model"), embedder.model_id),
            pc.equal(day.column("embedding_dimension"), embedder.dimension),
        ),
        pc.is_null(day.column("embedding_error")),
    )
    return frozenset(day.column("image_sha256").filter(usable).drop_null().to_pylist())


def _previous_downloads(
    object_store: ObjectStore, day: str, reusable: set[str]
) -> dict[tuple, dict]:
    """This day's last successful downloads whose vectors can be reused, by (product, URL)."""
    try:
        path = object_store.local_path(asset_output_key(["product_image_embeddings"], day))
    except FileNotFoundError:
        return {}
    columns = ["product_id", "image_url", "image_etag", "image_sha256", "image_s3_key"]
    try:
        rows = pq.read_table(path, columns=columns).to_pylist()
    except (pa.ArrowInvalid, KeyError):
        return {}  # written before these columns existed: download everything once more
    finally:
        object_store.release(path)
    return {
        (r["product_id"], r["image_url"]): r
        for r in rows
        if r["image_etag"] and r["image_sha256"] in reusable
    }


@asset(
    owners=settings().asset_owners,
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
    for the same image (sha256) and model are reused, and stay there (the result has no vector of
    its own). Results are written to Parquet batch by batch, so a day of any size is never held in
    memory at once.
    """
    start, end = context.partition_time_window
    processes = config.worker_processes if smartgo_sales.num_rows >= config.worker_min_sales else 1
    if processes > 1:
        start_worker_server()  # it starts while the table and the last run's downloads are read
    model_id = image_embedder.model_id
    reusable = _reusable_images(iceberg, start, end, image_embedder)
    previous = _previous_downloads(object_store, context.partition_key, reusable)
    sales = smartgo_sales.select(["product_id", "tenant_id", "image_url"]).to_pylist()
    items = [(sale, previous.get((sale["product_id"], sale["image_url"]))) for sale in sales]
    work = SaleWork(image_fetcher, object_store, image_embedder, reusable,
                    threads=config.download_concurrency)  # fmt: skip
    outcome = Outcome()
    total, embedded, reused = len(sales), 0, 0
    reasons: Counter[str] = Counter()
    lengths: Counter[int] = Counter()
    error_examples: list[dict] = []
    fd, name = tempfile.mkstemp(prefix="product_image_embeddings-", suffix=".parquet")
    os.close(fd)
    path = Path(name)
    pending: list[dict] = []
    with pq.ParquetWriter(
        path, sales_table.EMBEDDINGS_SCHEMA, **sales_table.EMBEDDINGS_PARQUET_OPTIONS
    ) as writer:
        for n, result in enumerate(run_sales(work, items, processes, outcome), start=1):
            if result["embedding_error"]:
                reasons[_reason_class(result["embedding_error"])] += 1
                if len(error_examples) < 5:
                    error_examples.append(result)
            elif result["embedding_reused"]:  # the table's vector, of the configured length, stays
                embedded += 1
                reused += 1
                lengths[image_embedder.dimension] += 1
            else:
                embedded += 1
                lengths[len(result["embedding_vector"])] += 1
            pending.append(result)
            if len(pending) == config.batch_rows or n == total:
                writer.write_batch(sales_table.embeddings_batch(pending))
                pending = []
            if n % 1000 == 0:
                context.log.info(f"{context.partition_key}: {n} of {total} images processed")
    errors = total - embedded
    context.log.info(
        f"{context.partition_key}: {embedded} embedded, {errors} errors, "
        f"{outcome.embedding_calls} embedding calls, {reused} reused, "
        f"{outcome.processes} process(es)"
    )
    yield Output(
        path,
        metadata={
            "sales": total,
            "embedded": embedded,
            "errors": errors,
            "error_reasons": reason_list(reasons, 10),
            "error_examples": md_table(error_examples, ["product_id", "embedding_error"]),
            "embedding_calls": outcome.embedding_calls,
            "worker_processes": outcome.processes,
            "sales_per_worker_process": MetadataValue.json(outcome.sales_per_process),
            "embeddings_reused": reused,
            "embedding_model": model_id,
            "estimated_bedrock_cost_usd": round(
                outcome.embedding_calls * image_embedder.price_per_image, 6
            ),
        },
    )
    yield checks.error_ratio_result(errors, total, config.max_error_ratio, reasons)
    yield checks.vector_length_result(lengths, image_embedder.dimension)


def _rows_if_unchanged(
    iceberg: IcebergCatalog,
    start: datetime,
    end: datetime,
    sales: pa.Table,
    embeddings: pq.ParquetFile,
    rows_of,
) -> pa.Table | None:
    """The day's rows, without their vectors, if the table holds them already: no vector among them
    computed afresh (a reused one is the table's own for the same image and model) and every other
    column equal. None if anything differs or the day has no rows yet. The vectors, most of the
    bytes, are not read."""
    vector = sales_table.EMBEDDINGS_SCHEMA.field("embedding_vector")
    results = embeddings.read(
        columns=[name for name in sales_table.EMBEDDINGS_SCHEMA.names if name != vector.name]
    )
    embedded_afresh = pc.and_(
        pc.is_null(results.column("embedding_error")), pc.invert(results.column("embedding_reused"))
    )
    if results.num_rows != sales.num_rows or pc.any(embedded_afresh).as_py():
        return None
    existing = iceberg.read_day(start, end, tuple(sales_table.COMPARED_COLUMNS))
    if existing is None:
        return None
    results = results.add_column(
        sales_table.EMBEDDINGS_SCHEMA.get_field_index(vector.name),
        vector,
        pa.nulls(results.num_rows, vector.type),
    )
    rows = rows_of(sales, results)
    return rows if sales_table.same_rows(rows, existing) else None


def _reason_class(error: str) -> str:
    """A reason without the per-sale detail, for the histogram: "image download failed: too large"
    for every "image download failed: too large: 11534336 bytes declared"."""
    return ": ".join(error.split(" (after")[0].split(": ")[:2])


@asset(
    owners=settings().asset_owners,
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
    product_image_embeddings: pq.ParquetFile,
    iceberg: IcebergCatalog,
    image_embedder: ImageEmbedder,
    export_progress: ExportProgressTracker,
) -> MaterializeResult:
    """`pricing_intelligence.smartgo_sales`: the day's rows replaced in one atomic commit.

    A day whose rows would come out as the table already holds them (no vector computed afresh,
    every other column equal) is left as it is: no new snapshot, and its rows keep their ingestion
    time.
    """
    start, end = context.partition_time_window
    ingested_at = datetime.now(UTC)
    hemisphere = settings().season_hemisphere
    rows_in_day, with_error, first_errors, preview = 0, 0, [], []

    def counted(rows: pa.Table) -> pa.Table:
        nonlocal rows_in_day, with_error
        errors = [e for e in rows.column("embedding_error").to_pylist() if e]
        rows_in_day += rows.num_rows
        with_error += len(errors)
        first_errors.extend(errors[: 10 - len(first_errors)])
        if not preview:
            preview.extend(rows.select(PREVIEW_COLUMNS).slice(0, 5).to_pylist())
        return rows

    def rows_of(sales: pa.Table, embeddings: pa.Table) -> pa.Table:
        return sales_table.sales_rows(
            sales, embeddings, image_embedder.dimension, ingested_at, hemisphere
        )

    def day_rows(known: KnownVectors):
        # The embeddings are in the sales' order: each batch is joined with its slice of the sales.
        offset = 0
        for batch in product_image_embeddings.iter_batches(batch_size=ICEBERG_BATCH_ROWS):
            embeddings = sales_table.with_reused_vectors(pa.Table.from_batches([batch]), known)
            yield counted(rows_of(smartgo_sales.slice(offset, batch.num_rows), embeddings))
            offset += batch.num_rows
        if offset < smartgo_sales.num_rows:  # sales without embeddings are still written
            yield counted(
                rows_of(smartgo_sales.slice(offset), sales_table.EMBEDDINGS_SCHEMA.empty_table())
            )

    unchanged = _rows_if_unchanged(
        iceberg, start, end, smartgo_sales, product_image_embeddings, rows_of
    )
    if unchanged is None:
        # Reused vectors are read back from the table before the day's rows in it are replaced.
        reused = product_image_embeddings.read(columns=["embedding_reused"]).column(0)
        model_id, dimension = image_embedder.model_id, image_embedder.dimension
        with (
            iceberg.day_vectors(start, end, model_id, dimension)
            if pc.any(reused).as_py()
            else KnownVectors((), model_id, dimension)
        ) as known:
            table = iceberg.replace_day(day_rows(known), start, end)
        written = rows_in_day
    else:
        counted(unchanged)
        table, written = iceberg.sales_table(), 0
        context.log.info(
            f"{context.partition_key}: the table already holds these {rows_in_day} rows; "
            "no new snapshot"
        )
    read_back = iceberg.read_day(start, end, ("product_id",))
    read_back_rows = read_back.num_rows if read_back is not None else 0
    snapshot = table.current_snapshot()
    export_progress.record(
        context.partition_key,
        "COMPLETE",
        totalCount=rows_in_day,
        successCount=rows_in_day - with_error,
        errorCount=with_error,
        errors=first_errors or None,
        completedAt=datetime.now(UTC).isoformat(),
    )
    return MaterializeResult(
        metadata={
            "table": sales_table.IDENTIFIER,
            "rows": rows_in_day,
            "rows_written": written,
            "day_unchanged": unchanged is not None,
            "rows_with_vector": rows_in_day - with_error,
            "rows_with_error": with_error,
            "snapshot_id": str(snapshot.snapshot_id) if snapshot else "",
            "table_location": location(table.location()),
            "preview": md_table(preview, PREVIEW_COLUMNS),
        },
        check_results=[checks.reconciliation_result(read_back_rows, smartgo_sales.num_rows)],
    )
