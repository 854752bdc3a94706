"""The QuickSight assets as a code location of their own, pointed at the benchmark's servers."""

import os

from dagster import Definitions, define_asset_job

from smartgo_analytics.assets.quicksight import dynamodb_daily_metrics, quicksight_datasets
from smartgo_analytics.resources.dynamodb import SalesDataTable
from smartgo_analytics.resources.object_store import LocalObjectStore
from smartgo_analytics.resources.quicksight import QuickSightExport

assets = [dynamodb_daily_metrics, *quicksight_datasets]
defs = Definitions(
    assets=assets,
    jobs=[define_asset_job("quicksight_job", selection=assets)],
    resources={
        "sales_data": SalesDataTable(
            endpoint_url=os.environ["BENCH_MOTO_URL"], region_name="us-east-1"
        ),
        "object_store": LocalObjectStore(lake_dir=os.environ["BENCH_LAKE"], bucket="bench"),
        "quicksight": QuickSightExport(),
    },
)
