"""Price bands: what sold items of a kind went for, from the Iceberg table, for pricing guidance."""

import warnings

from dagster import (
    AssetDep,
    AssetExecutionContext,
    BetaWarning,
    DataVersion,
    MaterializeResult,
    TimeWindowPartitionMapping,
    asset,
)

from smartgo_analytics import checks
from smartgo_analytics.assets.policies import IO_RETRY, PRICING, REFRESHED_WHEN_ITS_INPUTS_CHANGE
from smartgo_analytics.assets.pricing_intelligence import smartgo_sales_iceberg
from smartgo_analytics.core import price_bands as bands_core
from smartgo_analytics.core.sales_table import fingerprint
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.settings import settings
from smartgo_analytics.steps.price_bands import (
    BAND_ORDER,
    bands_metadata,
    bands_of_day,
    replace_bands,
)

with (
    warnings.catch_warnings()
):  # the parameter is "beta" in Dagster 1.13; its meaning is what we need
    warnings.simplefilter("ignore", BetaWarning)
    WINDOW = TimeWindowPartitionMapping(
        start_offset=1 - bands_core.WINDOW_DAYS,
        end_offset=0,
        allow_nonexistent_upstream_partitions=True,
    )


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
    bands, sales_in_window = bands_of_day(iceberg, day)
    table = replace_bands(iceberg, object_store, day, bands)
    context.log.info(f"{context.partition_key}: {bands.num_rows} price bands")
    return MaterializeResult(
        data_version=DataVersion(fingerprint(bands, BAND_ORDER)),
        metadata=bands_metadata(bands, sales_in_window, day, table, iceberg.catalog_name),
        check_results=[checks.price_bands_result(bands_core.band_problems(bands), bands.num_rows)],
    )
