"""Every object-store key the project writes, in one place."""

from __future__ import annotations

IMAGE_PREFIX = "images/smartgo"
STAGING_PREFIX = "staging"


def image_key(tenant_id: str, product_id: str, sha256: str, extension: str) -> str:
    return f"{IMAGE_PREFIX}/{tenant_id}/{product_id}/{sha256}.{extension}"


def quicksight_dataset_prefix(quicksight_prefix: str, dataset: str) -> str:
    return f"{quicksight_prefix}{dataset}/"


def quicksight_export_key(quicksight_prefix: str, dataset: str, date: str) -> str:
    return f"{quicksight_dataset_prefix(quicksight_prefix, dataset)}{date}.json"


def quicksight_month_prefix(quicksight_prefix: str, dataset: str) -> str:
    return f"{quicksight_prefix}months/{dataset}/"


def quicksight_month_key(quicksight_prefix: str, dataset: str, month: str) -> str:
    """A finished month of a dataset in one file: its days' lines, day by day."""
    return f"{quicksight_month_prefix(quicksight_prefix, dataset)}{month}.json"


def quicksight_manifest_key(quicksight_prefix: str, dataset: str) -> str:
    return f"{quicksight_prefix}manifests/{dataset}.json"


def daily_metrics_key(date: str) -> str:
    return f"{STAGING_PREFIX}/dynamodb_daily_metrics/{date}.ndjson"


def asset_output_key(asset_path: list[str], partition_key: str | None) -> str:
    name = "/".join(asset_path)
    return f"{STAGING_PREFIX}/{name}/{partition_key or 'latest'}.parquet"
