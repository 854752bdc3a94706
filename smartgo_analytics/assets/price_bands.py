"""Price bands: what sold items of a kind went for, from the Iceberg table, for pricing guidance."""

from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa
from dagster import (
    AssetDep,
    AssetExecutionContext,
    DataVersion,
    MaterializeResult,
    TimeWindowPartitionMapping,
    asset,
)
from pyiceberg.expressions import EqualTo

from smartgo_analytics import checks
from smartgo_analytics.assets.policies import IO_RETRY, PRICING, REFRESHED_WHEN_ITS_INPUTS_CHANGE
from smartgo_analytics.assets.pricing_intelligence import smartgo_sales_iceberg
from smartgo_analytics.core import price_bands as bands_core
from smartgo_analytics.core.ndjson import encode_ndjson
from smartgo_analytics.core.sales_table import fingerprint
from smartgo_analytics.layout import staged_records_key
from smartgo_analytics.metadata import iceberg_columns, md_table, snapshot_rows, table_metadata
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.iceberg import IcebergCatalog, replace
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.settings import settings


def bands_of_day(iceberg: IcebergCatalog, day: date) -> tuple[pa.Table, int]:
    """The day's bands computed from the table as it is now, and the sales of their window.

    A batch at a time from the data files, the price columns only (not the vectors), aggregated as
    they come: a 90-day window is never held whole."""
    first, _ = bands_core.window(day)
    start = datetime.combine(first, time(), UTC)
    end = datetime.combine(day + timedelta(days=1), time(), UTC)
    batches = iceberg.scan_day_files(start, end, bands_core.SALES_COLUMNS)
    sales = 0

    def counted(batch: pa.RecordBatch) -> pa.RecordBatch:
        nonlocal sales
        sales += batch.num_rows
        return batch.cast(bands_core.SALES_SCHEMA)

    reader = pa.RecordBatchReader.from_batches(bands_core.SALES_SCHEMA, map(counted, batches))
    bands = bands_core.price_bands(reader, day)
    return bands, sales


WINDOW = TimeWindowPartitionMapping(
    start_offset=1 - bands_core.WINDOW_DAYS,
    end_offset=0,
    allow_nonexistent_upstream_partitions=True,
)
BAND_ORDER = ("level", "tenant_id", "category", "brand", "condition")
PREVIEW = ["level", "tenant_id", "category", "brand", "condition", "sales_count", "median"]


@asset(
    owners=settings().asset_owners,
    partitions_def=daily_partitions,
    group_name=PRICING,
    kinds={"iceberg", "duckdb"},
    # The 90 days its bands are made of: a backfill makes them first, and a change to any of them
    # makes the bands stale (shown in the UI) and refreshes them.
    deps=[AssetDep(smartgo_sales_iceberg, partition_mapping=WINDOW)],
    automation_condition=REFRESHED_WHEN_ITS_INPUTS_CHANGE,
    retry_policy=IO_RETRY,
    check_specs=[checks.price_bands_hold],
)
def price_bands(
    context: AssetExecutionContext, iceberg: IcebergCatalog, object_store: ObjectStore
) -> MaterializeResult:
    """`pricing_intelligence.price_bands`: for each tenant x category x brand x condition, and the
    roll-ups tenant x category x condition and tenant x category, the count, p10, p25, median,
    p75, p90 and mean of the sold prices over the 90 days ending with the day. The day's bands are
    replaced in one commit, and staged for the QuickSight dataset `price_bands`."""
    day = context.partition_time_window.start.date()
    first, _ = bands_core.window(day)
    bands, sales_in_window = bands_of_day(iceberg, day)
    table = iceberg.table(bands_core.IDENTIFIER, bands_core.SCHEMA)
    table = replace(table, EqualTo("band_date", day.isoformat()), [bands])
    records = bands_core.quicksight_records(bands)
    object_store.put_bytes(
        staged_records_key("price_bands", day.isoformat()),
        encode_ndjson(records),
        "application/x-ndjson",
    )
    problems = bands_core.band_problems(bands)
    levels = bands.column("level").to_pylist()
    context.log.info(f"{context.partition_key}: {bands.num_rows} price bands")
    return MaterializeResult(
        data_version=DataVersion(fingerprint(bands, BAND_ORDER)),
        metadata={
            "table": bands_core.IDENTIFIER,
            "bands": bands.num_rows,
            **{f"bands_{level}": levels.count(level) for level in bands_core.LEVELS},
            "sales_in_window": sales_in_window,
            "window": f"{first.isoformat()} .. {day.isoformat()}",
            "snapshot_id": str(table.current_snapshot().snapshot_id),
            "preview": md_table(bands.to_pylist(), PREVIEW),
            **table_metadata(
                f"{iceberg.catalog_name}.{bands_core.IDENTIFIER}",
                table.location(),
                iceberg_columns(table.schema(), bands_core.DESCRIPTIONS),
                bands.num_rows,
                snapshot_rows(table),
            ),
        },
        check_results=[checks.price_bands_result(problems, bands.num_rows)],
    )
