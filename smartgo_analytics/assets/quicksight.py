"""DynamoDB daily metrics -> five NDJSON datasets, the price bands -> a sixth, and their QuickSight
manifests."""

from concurrent.futures import ThreadPoolExecutor
from functools import partial

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    MaterializeResult,
    asset,
    multi_asset,
)

from smartgo_analytics import checks
from smartgo_analytics.assets.policies import (
    IO_RETRY,
    QUICKSIGHT,
    REFRESHED_WHEN_ITS_INPUTS_CHANGE,
    permanent_errors,
)
from smartgo_analytics.core.quicksight import DAILY_METRICS, DATASETS, DATASETS_BY_NAME, DatasetSpec
from smartgo_analytics.metadata import location
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.dynamodb import DynamoDBError, SalesDataTable
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.resources.quicksight import QuickSightExport
from smartgo_analytics.settings import settings
from smartgo_analytics.steps.quicksight import (
    DAY_QUERIES_IN_FLIGHT,
    export_dataset_day,
    export_day,
    file_check_evaluation,
    metrics_metadata,
    refreshed,
    write_manifest,
)

GROUP = QUICKSIGHT
SINGLE_RUN = BackfillPolicy.single_run()


@asset(
    owners=settings().asset_owners,
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"dynamodb"},
    backfill_policy=SINGLE_RUN,
    retry_policy=IO_RETRY,
)
def dynamodb_daily_metrics(
    context: AssetExecutionContext, sales_data: SalesDataTable, object_store: ObjectStore
) -> MaterializeResult:
    """Every SalesData item of the day (one paginated GSI1 query), numbers made JSON-safe.

    In a single-run backfill the days are queried concurrently: each is its own GSI1 query. Such a
    run's figures are the run's (`*_in_run`), with each day's own in `per_day`: the QuickSight
    datasets downstream need this asset's output, so it cannot be split into a record per day.
    """
    export = partial(export_day, sales_data=sales_data, object_store=object_store, log=context.log)
    with (
        permanent_errors(DynamoDBError),
        ThreadPoolExecutor(max_workers=DAY_QUERIES_IN_FLIGHT) as pool,
    ):
        per_day = list(pool.map(export, context.partition_keys))
    context.log.info(
        f"read {sum(d['items'] for d in per_day)} SalesData items for {len(per_day)} day(s)"
    )
    return MaterializeResult(metadata=metrics_metadata(per_day, sales_data.table_name))


def quicksight_dataset_asset(spec: DatasetSpec) -> AssetsDefinition:
    key = AssetKey(["quicksight", spec.name])
    file_check = checks.file_matches_source_spec(key)

    # A multi-asset only so that a run of many days can record each day's own materialisation and
    # check result: an asset's output would give every day of the run the same figures.
    @multi_asset(
        specs=[
            AssetSpec(
                key,
                deps=[AssetKey(spec.staged_by)],
                partitions_def=daily_partitions,
                group_name=GROUP,
                kinds={"s3"},
                owners=settings().asset_owners,
                description=f"{spec.description}: NDJSON, one file a day, plus its QuickSight manifest",
                # The price bands' days are refreshed when an earlier day's sales change; so is their file.
                automation_condition=None
                if spec.staged_by == DAILY_METRICS
                else REFRESHED_WHEN_ITS_INPUTS_CHANGE,
            )
        ],
        name=f"quicksight__{spec.name}",
        partitions_def=daily_partitions,
        check_specs=[file_check],
        can_subset=True,
        backfill_policy=SINGLE_RUN,
        retry_policy=IO_RETRY,
    )
    def _dataset(
        context: AssetExecutionContext, object_store: ObjectStore, quicksight: QuickSightExport
    ):
        keys = context.partition_keys
        exports = {
            day: export_dataset_day(spec, day, object_store, quicksight.prefix) for day in keys
        }
        for day, export in exports.items():
            context.log_event(file_check_evaluation(key, file_check.name, day, export))
        manifest_uri, files = write_manifest(object_store, quicksight.prefix, spec.name, keys)
        passed = all(not export.problems for export in exports.values())
        run_metadata = {
            "days_in_run": len(keys),
            "records_exported_in_run": sum(export.exported for export in exports.values()),
            "manifest_uri": location(manifest_uri) if manifest_uri else "none (no records yet)",
            "manifest_files": files,
            **refreshed(quicksight, spec, keys, context.run.run_id, passed),
        }
        for day, export in exports.items():
            context.log_event(
                AssetMaterialization(
                    asset_key=key, partition=day, metadata={**export.metadata, **run_metadata}
                )
            )
        yield from ()  # each day's materialisation is the event above

    return _dataset


quicksight_datasets = [
    quicksight_dataset_asset(s) for s in DATASETS if s.staged_by == DAILY_METRICS
]
price_bands_dataset = quicksight_dataset_asset(DATASETS_BY_NAME["price_bands"])
