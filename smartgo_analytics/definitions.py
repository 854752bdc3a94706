import warnings

from dagster import (
    AssetsDefinition,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    colored_console_logger,
    in_process_executor,
    load_assets_from_modules,
)

from smartgo_analytics.assets import price_bands, pricing_intelligence, quicksight, similarity
from smartgo_analytics.deployment import this_deployment
from smartgo_analytics.maintenance import iceberg_maintenance_job, iceberg_maintenance_schedule
from smartgo_analytics.model_comparison import compare_models_job
from smartgo_analytics.reembedding import reembed_history_job
from smartgo_analytics.schedules import daily_analytics_job, daily_analytics_schedule
from smartgo_analytics.sensors import (
    build_freshness_alert,
    failed_check_alert,
    failed_partition_alert,
)

# The daily job runs one day, so its mixed backfill policies never meet; backfills launched from the
# UI are asset backfills, and there each asset keeps its own policy (single run or one day per run).
warnings.filterwarnings(
    "ignore", message="Asset job daily_analytics_job materializes assets with varying"
)

assets = [
    *load_assets_from_modules([pricing_intelligence]),
    price_bands.price_bands,
    similarity.similarity_index,
    quicksight.dynamodb_daily_metrics,
    *quicksight.quicksight_datasets,
    quicksight.price_bands_dataset,
]

# Days materialised before an earlier day they read changed (price bands over 90 days, and their
# QuickSight file): made again once that day is done (assets/policies.REFRESHED_WHEN_ITS_INPUTS_CHANGE).
stale_days_refresh = AutomationConditionSensorDefinition(
    "stale_days_refresh",
    target=AssetSelection.assets(price_bands.price_bands, quicksight.price_bands_dataset),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Makes again the price bands (and their QuickSight file) of each materialised day "
    "whose 90-day window changed since",
)

defs = Definitions(
    assets=assets,
    jobs=[daily_analytics_job, iceberg_maintenance_job, reembed_history_job, compare_models_job],
    schedules=[daily_analytics_schedule, iceberg_maintenance_schedule],
    sensors=[
        stale_days_refresh,
        failed_partition_alert,
        failed_check_alert,
        build_freshness_alert(
            [
                key
                for a in assets
                if isinstance(a, AssetsDefinition) and a.is_executable
                for key in a.keys
            ]
        ),
    ],
    resources=this_deployment().resources(),
    # Runs print INFO and above (the assets' own progress lines); step events stay in the UI.
    loggers={"console": colored_console_logger.configured({"log_level": "INFO"})},
    # A run's steps share its process: a process per step cost more than the steps' own work (a
    # 200-sale day: 17 s for 4 s of work; the `ui_day_run` benchmark). The embedding step still
    # splits big days over workers.
    executor=in_process_executor,
)
