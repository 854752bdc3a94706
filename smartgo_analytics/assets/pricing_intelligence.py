"""SmartGo sales -> safe image download -> image embeddings -> Iceberg table."""

import io
import os
import tempfile
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from smartgo_analytics import checks, pools
from smartgo_analytics.assets.policies import (
    IO_RETRY,
    PRICING,
    disk_full_is_named,
    outage_fails_the_step,
    permanent_errors,
)
from smartgo_analytics.core import sales_table
from smartgo_analytics.core.embedding_day import (
    PREVIEW_COLUMNS,
    DayRows,
    EmbeddingTally,
    ReusedVectors,
    previous_downloads,
    usable_images,
    write_results,
)
from smartgo_analytics.core.pacing import Pace, PaceReport
from smartgo_analytics.core.sales import DUPLICATE_REASON, QUARANTINE_SCHEMA, validated_day
from smartgo_analytics.embedding.work import (
    Outcome,
    SaleWork,
    minor_hosts,
    run_sales,
    start_worker_server,
    worker_context,
)
from smartgo_analytics.layout import asset_output_key, quarantine_key
from smartgo_analytics.metadata import (
    iceberg_columns,
    location,
    md_table,
    snapshot_rows,
    table_metadata,
)
from smartgo_analytics.metadata import reasons as reason_list
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.dynamodb import DynamoDBError, ExportProgressTracker, ImageVectors
from smartgo_analytics.resources.embeddings import ImageEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.images import ImageFetcher
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.resources.postgres import SmartGoDatabase, SmartGoDatabaseError
from smartgo_analytics.settings import settings

GROUP = PRICING
# No backfill policy on the pricing assets: a backfill is then a run per day, tagged with its day
# (a policy of one-day ranges would leave the checks' results without their partition), and the
# `bedrock` pool caps how many embed at once.
# Rows per Iceberg append: reading nested vectors back from Parquet costs several times their size.
ICEBERG_BATCH_ROWS = 4_000
USABILITY_COLUMNS = ("image_sha256", "embedding_model", "embedding_dimension", "embedding_error")
RESULT_COLUMNS_WITHOUT_VECTORS = [
    name for name in sales_table.EMBEDDINGS_SCHEMA.names if name != "embedding_vector"
]


@asset(
    owners=settings().asset_owners,
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"postgres"},
    io_manager_key="parquet_io_manager",
    retry_policy=IO_RETRY,
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
    with permanent_errors(SmartGoDatabaseError), outage_fails_the_step():
        (table, rejected), outage = smartgo_db.read_sold_products(
            start, end, validated_day, settings().outage_allowance_s
        )
    reasons = Counter(r.reason for r in rejected)
    metadata = {
        "source_rows": table.num_rows + len(rejected),
        "database_reads_retried": outage.retries,
        "database_outage_seconds": outage.outage_s,
        "valid_rows": table.num_rows,
        "quarantined_rows": len(rejected),
        "duplicate_product_ids": reasons[DUPLICATE_REASON],
        "window": f"[{start.isoformat()}, {end.isoformat()})",
    }
    if rejected:
        quarantined = [{"product_id": r.product_id, "reason": r.reason} for r in rejected]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA), buffer)
        key = quarantine_key("smartgo_sales", context.partition_key)
        metadata["quarantine_uri"] = location(object_store.put_bytes(key, buffer.getvalue()))
        metadata["quarantined_examples"] = md_table(quarantined, ["product_id", "reason"])
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
    outage_allowance_s: float = Field(
        default_factory=lambda: settings().outage_allowance_s,
        description="how long an outage of the CDN or Bedrock is waited out before the step fails",
    )
    own_failure_window_s: float = Field(
        default=30.0,
        description="how long one sale's download or call keeps failing while others get through "
        "before it is that sale's error",
    )


def _last_downloads(object_store: ObjectStore, day: str) -> list[dict]:
    """The day's previous embedding results (product, URL, ETag, image), if a run wrote them."""
    columns = ["product_id", "image_url", "image_etag", "image_sha256", "image_s3_key"]
    try:
        with object_store.local_copy(asset_output_key(["product_image_embeddings"], day)) as path:
            return pq.read_table(path, columns=columns).to_pylist()
    except FileNotFoundError:
        return []
    except (pa.ArrowInvalid, KeyError):
        return []  # written before these columns existed: download everything once more


@asset(
    owners=settings().asset_owners,
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"bedrock", "s3"},
    io_manager_key="parquet_io_manager",
    retry_policy=IO_RETRY,
    pool=pools.BEDROCK,
    check_specs=[checks.embedding_error_ratio, checks.vector_length],
)
def product_image_embeddings(
    context: AssetExecutionContext,
    config: EmbeddingConfig,
    smartgo_sales: pa.Table,
    image_fetcher: ImageFetcher,
    image_embedder: ImageEmbedder,
    image_vectors: ImageVectors,
    object_store: ObjectStore,
    iceberg: IcebergCatalog,
):
    """Every valid sale's image: downloaded safely, copied to object storage, embedded.

    An image is embedded once, ever: one whose vector (same sha256, model and length) is in the
    image vectors (IMAGE_VECTORS_TABLE) from any earlier day is not sent to Bedrock, and the result has no vector of its
    own (the table's row gets the stored one). An image unchanged since the day's last run (same
    ETag) is not even downloaded. Calls are paced to BEDROCK_REQUESTS_PER_MINUTE and BEDROCK_TOKENS_PER_MINUTE when set.
    """
    start, end = context.partition_time_window
    with permanent_errors(DynamoDBError):
        image_vectors.check()
    processes = config.worker_processes if smartgo_sales.num_rows >= config.worker_min_sales else 1
    if processes > 1:
        start_worker_server()  # it starts while the table and the last run's downloads are read
    held = iceberg.read_day(start, end, USABILITY_COLUMNS)
    usable = usable_images(held, image_embedder.model_id, image_embedder.dimension)
    previous = previous_downloads(_last_downloads(object_store, context.partition_key), usable)
    sales = smartgo_sales.select(["product_id", "tenant_id", "image_url"]).to_pylist()
    items = [(sale, previous.get((sale["product_id"], sale["image_url"]))) for sale in sales]
    pace = Pace(
        image_embedder.requests_per_minute,
        image_embedder.tokens_per_minute,
        processes=worker_context(),
    )
    image_embedder.use_pace(pace)
    work = SaleWork(
        image_fetcher,
        object_store,
        image_embedder,
        image_vectors,
        config.download_concurrency,
        config.outage_allowance_s,
        minor_hosts([s["image_url"] for s in sales], config.max_error_ratio),
        config.own_failure_window_s,
    )
    outcome, tally = Outcome(), EmbeddingTally(image_embedder.dimension)
    fd, path = tempfile.mkstemp(prefix="product_image_embeddings-", suffix=".parquet")
    os.close(fd)
    with outage_fails_the_step(), disk_full_is_named():
        write_results(
            run_sales(work, items, processes, outcome, pace),
            path,
            config.batch_rows,
            tally,
            lambda n: context.log.info(
                f"{context.partition_key}: {n} of {len(items)} images processed"
            ),
        )
    paced = pace.report()
    context.log.info(
        f"{context.partition_key}: {tally.embedded} embedded, {tally.errors} errors, "
        f"{outcome.embedding_calls} embedding calls, {tally.reused} reused, "
        f"{paced.throttled} throttled, {outcome.processes} process(es)"
    )
    yield Output(Path(path), metadata=_embedding_metadata(tally, outcome, paced, image_embedder))
    yield checks.error_ratio_result(
        tally.errors, tally.sales, config.max_error_ratio, tally.reasons
    )
    yield checks.vector_length_result(tally.lengths, image_embedder.dimension)


def _embedding_metadata(
    tally: EmbeddingTally, outcome: Outcome, paced: PaceReport, embedder: ImageEmbedder
) -> dict:
    metadata = {
        "sales": tally.sales,
        "embedded": tally.embedded,
        "errors": tally.errors,
        "error_reasons": reason_list(tally.reasons, 10),
        "error_examples": md_table(tally.error_examples, ["product_id", "embedding_error"]),
        "embedding_calls": outcome.embedding_calls,
        "embeddings_reused": tally.reused,
        "estimated_bedrock_cost_usd": round(outcome.embedding_calls * embedder.price_per_image, 6),
        "estimated_cost_saved_usd": round(tally.reused * embedder.price_per_image, 6),
        "bedrock_requests": paced.calls,  # HTTP attempts, retries included
        "throttled_responses": paced.throttled,
        "worker_processes": outcome.processes,
        # Transient failures waited out, never counted as a sale's error.
        "outage_retries": sum(f["retries"] for f in outcome.outage_figures().values()),
        "sales_requeued": sum(f["requeued"] for f in outcome.outage_figures().values()),
        "outage_seconds": MetadataValue.json(
            {name: f["outage_s"] for name, f in outcome.outage_figures().items()}
        ),
        "sales_per_worker_process": MetadataValue.json(outcome.sales_per_process),
        "embedding_model": embedder.model_id,
    }
    if paced.calls_per_minute is not None:
        metadata["requests_per_minute"] = round(paced.calls_per_minute, 1)
    if paced.quota_per_minute:
        metadata["quota_requests_per_minute"] = paced.quota_per_minute
        metadata["ratio_to_quota"] = round(paced.ratio_to_quota or 0.0, 3)
    if paced.tokens:
        metadata["bedrock_tokens_charged"] = paced.tokens
    if paced.tokens_per_minute is not None and paced.token_quota_per_minute:
        metadata["tokens_per_minute"] = round(paced.tokens_per_minute, 1)
        metadata["quota_tokens_per_minute"] = paced.token_quota_per_minute
        metadata["ratio_to_token_quota"] = round(paced.ratio_to_token_quota or 0.0, 3)
    return metadata


@asset(
    owners=settings().asset_owners,
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"iceberg"},
    retry_policy=IO_RETRY,
    check_specs=[checks.iceberg_reconciles],
)
def smartgo_sales_iceberg(
    context: AssetExecutionContext,
    smartgo_sales: pa.Table,
    product_image_embeddings: pq.ParquetFile,
    iceberg: IcebergCatalog,
    image_embedder: ImageEmbedder,
    image_vectors: ImageVectors,
    export_progress: ExportProgressTracker,
) -> MaterializeResult:
    """`pricing_intelligence.smartgo_sales`: the day's rows replaced in one atomic commit.

    A day whose rows would come out as the table already holds them (no vector computed afresh,
    every other column equal) is left as it is: no new snapshot, and its rows keep their ingestion
    time.
    """
    start, end = context.partition_time_window
    day = DayRows(
        smartgo_sales, image_embedder.dimension, datetime.now(UTC), settings().season_hemisphere
    )
    table, written, unchanged = _write_day(
        day, product_image_embeddings, iceberg, image_embedder, image_vectors, start, end
    )
    if unchanged:
        context.log.info(f"{context.partition_key}: the table holds these {day.rows} rows already")
    read_back = iceberg.read_day(start, end, ("product_id",))
    _record_progress(export_progress, context.partition_key, day)
    return MaterializeResult(
        # The day's sales as the source gave them: the days that read this one (price bands over
        # 90 days) are made again when it changes, not when it is written again unchanged.
        data_version=DataVersion(sales_table.fingerprint(smartgo_sales, ("product_id",))),
        metadata=_table_metadata(day, table, written, unchanged, iceberg),
        check_results=[
            checks.reconciliation_result(
                read_back.num_rows if read_back is not None else 0, smartgo_sales.num_rows
            )
        ],
    )


def _write_day(
    day: DayRows,
    results: pq.ParquetFile,
    iceberg: IcebergCatalog,
    embedder: ImageEmbedder,
    image_vectors: ImageVectors,
    start,
    end,
):
    """The day's rows written in one commit, unless the table holds them already: the table, the
    rows written, and whether the day was left unchanged."""
    model_id, dimension = embedder.model_id, embedder.dimension
    unchanged = day.if_unchanged(
        results.read(columns=RESULT_COLUMNS_WITHOUT_VECTORS),
        lambda: iceberg.read_day(start, end, tuple(sales_table.COMPARED_COLUMNS)),
    )
    if unchanged is not None:
        day.counted(unchanged)
        return iceberg.sales_table(), 0, True
    with ReusedVectors(
        stored=partial(image_vectors.vectors, model_id, dimension),
        older=partial(iceberg.day_vectors, start, end, model_id, dimension),
        store=partial(image_vectors.store, model_id, dimension),
    ) as reused:
        batches = results.iter_batches(batch_size=ICEBERG_BATCH_ROWS)
        table = iceberg.replace_day(day.batches(batches, reused), start, end)
    return table, day.rows, False


def _record_progress(export_progress: ExportProgressTracker, partition_key: str, day: DayRows):
    export_progress.record(
        partition_key,
        "COMPLETE",
        totalCount=day.rows,
        successCount=day.rows - day.with_error,
        errorCount=day.with_error,
        errors=day.first_errors or None,
        completedAt=datetime.now(UTC).isoformat(),
    )


def _table_metadata(day: DayRows, table, written: int, unchanged: bool, iceberg: IcebergCatalog):
    snapshot = table.current_snapshot()
    return {
        "table": sales_table.IDENTIFIER,
        "rows": day.rows,
        "rows_written": written,
        "day_unchanged": unchanged,
        "rows_with_vector": day.rows - day.with_error,
        "rows_with_error": day.with_error,
        "snapshot_id": str(snapshot.snapshot_id) if snapshot else "",
        "preview": md_table(day.preview, PREVIEW_COLUMNS),
        **table_metadata(
            f"{iceberg.catalog_name}.{sales_table.IDENTIFIER}",
            table.location(),
            iceberg_columns(table.schema(), sales_table.DESCRIPTIONS),
            day.rows,
            snapshot_rows(table),
        ),
    }
