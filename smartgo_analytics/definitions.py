import warnings

from dagster import Definitions, load_assets_from_modules

from smartgo_analytics.assets import pricing_intelligence, quicksight
from smartgo_analytics.deployment import resources_for_deployment
from smartgo_analytics.schedules import daily_analytics_job, daily_analytics_schedule

# The daily job runs one day, so its mixed backfill policies never meet; backfills launched from the
# UI are asset backfills, and there each asset keeps its own policy (single run or one day per run).
warnings.filterwarnings(
    "ignore", message="Asset job daily_analytics_job materializes assets with varying"
)

defs = Definitions(
    assets=[
        *load_assets_from_modules([pricing_intelligence]),
        quicksight.dynamodb_daily_metrics,
        *quicksight.quicksight_datasets,
    ],  # fmt: skip
    jobs=[daily_analytics_job],
    schedules=[daily_analytics_schedule],
    resources=resources_for_deployment(),
)
