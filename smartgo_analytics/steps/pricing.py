"""What the pricing assets do between reading their inputs and reporting: the plain functions
their bodies call."""

import io
import os
import tempfile
from datetime import UTC, datetime
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import MetadataValue
from pyiceberg.table import Table

from smartgo_analytics.core import sales_table
from smartgo_analytics.core.embedding_day import (
    PREVIEW_COLUMNS,
    DayRows,
    EmbeddingTally,
    ReusedVectors,
    Sale,
    previous_downloads,
    usable_images,
)
from smartgo_analytics.core.pacing import Pace, PaceReport
from smartgo_analytics.core.sales import QUARANTINE_SCHEMA, Rejected
from smartgo_analytics.embedding.config import EmbeddingConfig
from smartgo_analytics.embedding.sale_work import Outcome, SaleLimits, SaleWork, minor_hosts
from smartgo_analytics.embedding.workers import worker_context
from smartgo_analytics.layout import asset_output_key, quarantine_key
from smartgo_analytics.metadata import (
    iceberg_columns,
    location,
    md_table,
    snapshot_rows,
    table_metadata,
)
from smartgo_analytics.metadata import reasons as reason_list
from smartgo_analytics.resources.dynamodb import ExportProgressTracker, ImageVectors
from smartgo_analytics.resources.embeddings import ImageEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.images import ImageFetcher
from smartgo_analytics.resources.object_store import ObjectStore

# Rows per Iceberg append: reading nested vectors back from Parquet costs several times their size
# (the `day_of_100k_sales` benchmark).
ICEBERG_BATCH_ROWS = 4_000
USABILITY_COLUMNS = ("image_sha256", "embedding_model", "embedding_dimension", "embedding_error")
RESULT_COLUMNS_WITHOUT_VECTORS = [
    name for name in sales_table.EMBEDDINGS_SCHEMA.names if name != "embedding_vector"
]


def quarantine(object_store: ObjectStore, day: str, rejected: list[Rejected]) -> dict:
    """The day's rejected rows written to the quarantine file: its location and examples."""
    if not rejected:
        return {}
    quarantined = [{"product_id": r.product_id, "reason": r.reason} for r in rejected]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA), buffer)
    key = quarantine_key("smartgo_sales", day)
    return {
        "quarantine_uri": location(object_store.put_bytes(key, buffer.getvalue())),
        "quarantined_examples": md_table(quarantined, ["product_id", "reason"]),
    }


def last_downloads(object_store: ObjectStore, day: str) -> list[dict]:
    """The day's previous embedding results (product, URL, ETag, image), if a run wrote them."""
    columns = ["product_id", "image_url", "image_etag", "image_sha256", "image_s3_key"]
    try:
        with object_store.local_copy(asset_output_key(["product_image_embeddings"], day)) as path:
            return pq.read_table(path, columns=columns).to_pylist()
    except FileNotFoundError:
        return []
    except (pa.ArrowInvalid, KeyError):
        return []  # written before these columns existed: download everything once more


def sales_with_downloads(
    sales: pa.Table,
    iceberg: IcebergCatalog,
    object_store: ObjectStore,
    embedder: ImageEmbedder,
    start: datetime,
    end: datetime,
) -> list[Sale]:
    """The day's sales, each with the last run's download of its image when that image's vector is
    still usable (same ETag, and a vector of the embedder's model and length), else None."""
    held = iceberg.read_day(start, end, USABILITY_COLUMNS)
    usable = usable_images(held, embedder.model_id, embedder.dimension)
    previous = previous_downloads(last_downloads(object_store, start.date().isoformat()), usable)
    rows = sales.select(["product_id", "tenant_id", "image_url"]).to_pylist()
    return [Sale(**row, before=previous.get((row["product_id"], row["image_url"]))) for row in rows]


def shared_pace(embedder: ImageEmbedder) -> Pace:
    """One pace for the day's Bedrock calls, shared by every worker process, given to the embedder."""
    pace = Pace(
        embedder.requests_per_minute, embedder.tokens_per_minute, processes=worker_context()
    )
    embedder.use_pace(pace)
    return pace


def sale_work(
    config: EmbeddingConfig,
    sales: list[Sale],
    fetcher: ImageFetcher,
    object_store: ObjectStore,
    embedder: ImageEmbedder,
    image_vectors: ImageVectors,
) -> SaleWork:
    """What each sale goes through (download, copy, embed), bounded as configured."""
    return SaleWork(
        image_fetcher=fetcher,
        object_store=object_store,
        image_embedder=embedder,
        image_vectors=image_vectors,
        limits=SaleLimits(
            threads=config.download_concurrency,
            outage_allowance_s=config.outage_allowance_s,
            minor_hosts=minor_hosts([sale.image_url for sale in sales], config.max_error_ratio),
            own_window_s=config.own_failure_window_s,
        ),
    )


def log_progress(log, day: str, sales: int, done: int) -> None:
    log.info(f"{day}: {done} of {sales} images processed")


def results_file() -> str:
    """A new local file for the day's results (the IO manager moves it to the object store)."""
    fd, path = tempfile.mkstemp(prefix="product_image_embeddings-", suffix=".parquet")
    os.close(fd)
    return path


def embedding_metadata(
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
        # What decided the worker processes: the first sales' CPU each, in the step's process.
        "first_sales_cpu_ms_per_sale": round(outcome.first_sales_cpu_ms or 0.0, 1),
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


def write_day(
    day: DayRows,
    results: pq.ParquetFile,
    iceberg: IcebergCatalog,
    embedder: ImageEmbedder,
    image_vectors: ImageVectors,
    start: datetime,
    end: datetime,
) -> tuple[Table, int, bool]:
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


def record_progress(
    export_progress: ExportProgressTracker, partition_key: str, day: DayRows
) -> None:
    export_progress.record(
        partition_key,
        "COMPLETE",
        totalCount=day.rows,
        successCount=day.rows - day.with_error,
        errorCount=day.with_error,
        errors=day.first_errors or None,
        completedAt=datetime.now(UTC).isoformat(),
    )


def sales_table_metadata(
    day: DayRows, table: Table, written: int, unchanged: bool, iceberg: IcebergCatalog
) -> dict:
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
