"""SmartGo sales -> safe image download -> image embeddings -> Iceberg table."""

from collections import Counter
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, Output, asset

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
    DayRows,
    write_results,
)
from smartgo_analytics.core.sales import (
    DUPLICATE_REASON,
    OTHER_TENANT,
    OUTSIDE_WINDOW,
    validated_day,
)
from smartgo_analytics.embedding.config import EmbeddingConfig
from smartgo_analytics.embedding.work import ProcessRule, SalesRun
from smartgo_analytics.embedding.workers import start_worker_server
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.dynamodb import DynamoDBError, ExportProgressTracker, ImageVectors
from smartgo_analytics.resources.embeddings import ImageEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.images import ImageFetcher
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.resources.sales_source import SalesSource
from smartgo_analytics.settings import settings
from smartgo_analytics.steps.pricing import (
    embedding_metadata,
    log_progress,
    quarantine,
    record_progress,
    results_file,
    sale_work,
    sales_table_metadata,
    sales_with_downloads,
    shared_pace,
    write_day,
)

GROUP = PRICING


# No backfill policy on the pricing assets: a backfill is then a run per day, tagged with its day
# (a policy of one-day ranges would leave the checks' results without their partition), and the
# `bedrock` pool caps how many embed at once.
@asset(
    owners=settings().asset_owners,
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"postgres" if settings().sales_source == "database" else settings().sales_source},
    io_manager_key="parquet_io_manager",
    retry_policy=IO_RETRY,
    check_specs=[checks.no_quarantined_rows, checks.source_honours_filters],
)
def smartgo_sales(
    context: AssetExecutionContext,
    sales_source: SalesSource,
    object_store: ObjectStore,
    export_progress: ExportProgressTracker,
):
    """The day's SOLD products (from the SmartGo database or its API: SMARTGO_SALES_SOURCE),
    validated; unusable rows are quarantined with a reason each."""
    start, end = context.partition_time_window
    export_progress.record(
        context.partition_key, "IN_PROGRESS", startedAt=datetime.now(UTC).isoformat()
    )
    with permanent_errors(*sales_source.errors), outage_fails_the_step():
        sales_source.check()
        asked = partial(validated_day, window=(start, end), tenant=sales_source.tenant)
        (table, rejected), outage = sales_source.read_sold_products(
            start, end, asked, settings().outage_allowance_s
        )
    reasons = Counter(r.reason for r in rejected)
    metadata = {
        "source_rows": table.num_rows + len(rejected),
        "source": sales_source.kind,
        f"{sales_source.kind}_reads_retried": outage.retries,
        f"{sales_source.kind}_outage_seconds": outage.outage_s,
        "valid_rows": table.num_rows,
        "quarantined_rows": len(rejected),
        "duplicate_product_ids": reasons[DUPLICATE_REASON],
        "rows_outside_window": reasons[OUTSIDE_WINDOW],
        "rows_of_other_tenants": reasons[OTHER_TENANT],
        "window": f"[{start.isoformat()}, {end.isoformat()})",
    }
    metadata |= quarantine(object_store, context.partition_key, rejected)
    context.log.info(
        f"{context.partition_key}: {table.num_rows} valid sales, {len(rejected)} quarantined"
    )
    yield Output(table, metadata=metadata)
    yield checks.quarantine_result(len(rejected), table.num_rows + len(rejected), reasons)
    yield checks.filters_result(reasons[OUTSIDE_WINDOW], reasons[OTHER_TENANT], sales_source.kind)


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
    image vectors (IMAGE_VECTORS_TABLE) from any earlier day is not sent to Bedrock, and the result
    has no vector of its own (the table's row gets the stored one). An image unchanged since the
    day's last run (same ETag) is not even downloaded. Calls are paced to
    BEDROCK_REQUESTS_PER_MINUTE and BEDROCK_TOKENS_PER_MINUTE when set.
    """
    start, end = context.partition_time_window
    with permanent_errors(DynamoDBError):
        image_vectors.check()
    rule = ProcessRule(config.worker_processes, config.worker_min_cpu_s, config.worker_probe_sales)
    if rule.processes > 1 and smartgo_sales.num_rows > rule.probe_sales:
        start_worker_server()  # it starts while the table and the last run's downloads are read
    items = sales_with_downloads(smartgo_sales, iceberg, object_store, image_embedder, start, end)
    pace = shared_pace(image_embedder)
    work = sale_work(config, items, image_fetcher, object_store, image_embedder, image_vectors)
    path = results_file()
    run = SalesRun(work, items, rule, pace)
    with outage_fails_the_step(), disk_full_is_named():
        tally = write_results(
            run,
            path,
            config.batch_rows,
            image_embedder.dimension,
            partial(log_progress, context.log, context.partition_key, len(items)),
        )
    outcome = run.outcome
    paced = pace.report()
    context.log.info(
        f"{context.partition_key}: {tally.embedded} embedded, {tally.errors} errors, "
        f"{outcome.embedding_calls} embedding calls, {tally.reused} reused, "
        f"{paced.throttled} throttled, {outcome.processes} process(es)"
    )
    yield Output(Path(path), metadata=embedding_metadata(tally, outcome, paced, image_embedder))
    yield checks.error_ratio_result(
        tally.errors, tally.sales, config.max_error_ratio, tally.reasons
    )
    yield checks.vector_length_result(tally.lengths, image_embedder.dimension)


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
    table, written, unchanged = write_day(
        day, product_image_embeddings, iceberg, image_embedder, image_vectors, start, end
    )
    if unchanged:
        context.log.info(f"{context.partition_key}: the table holds these {day.rows} rows already")
    read_back = iceberg.read_day(start, end, ("product_id",))
    record_progress(export_progress, context.partition_key, day)
    return MaterializeResult(
        # The day's sales as the source gave them: the days that read this one (price bands over
        # 90 days) are made again when it changes, not when it is written again unchanged.
        data_version=DataVersion(sales_table.fingerprint(smartgo_sales, ("product_id",))),
        metadata=sales_table_metadata(day, table, written, unchanged, iceberg),
        check_results=[
            checks.reconciliation_result(
                read_back.num_rows if read_back is not None else 0, smartgo_sales.num_rows
            )
        ],
    )
