"""The Dagster resources of each deployment (`deployment.this_deployment().resources()`): one set
of resources for both, the local deployment giving them the running stack's loopback endpoints,
DSN, catalog properties and lake location as data. No module under `resources/` imports `local/`."""

from __future__ import annotations

from collections.abc import Callable

from dagster import EnvVar, ResourceDefinition
from pydantic import ValidationError

from smartgo_analytics.local.stack import (
    EXPORT_PROGRESS_TABLE,
    IMAGE_VECTORS_TABLE,
    LOCAL_BUCKET,
    StackError,
    StackInfo,
    running_stack,
    smartgo_home,
)
from smartgo_analytics.resources.alerts import Alerter
from smartgo_analytics.resources.bedrock_batch import BedrockBatch
from smartgo_analytics.resources.dynamodb import ExportProgressTracker, ImageVectors, SalesDataTable
from smartgo_analytics.resources.embeddings import BedrockEmbedder, LocalVisualEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.images import ImageFetcher
from smartgo_analytics.resources.object_store import LocalObjectStore, S3ObjectStore
from smartgo_analytics.resources.parquet_io import ParquetIOManager
from smartgo_analytics.resources.postgres import SmartGoDatabase
from smartgo_analytics.resources.quicksight import QuickSightExport
from smartgo_analytics.resources.sales_api import SalesApiError, SmartGoApi
from smartgo_analytics.resources.sales_source import SalesSource
from smartgo_analytics.settings import ConfigurationError, Settings


def alerter(config: Settings, **aws: str | None) -> Alerter:
    """The log always; Slack and SNS when their settings are there."""
    destinations = ["log"]
    if config.slack_webhook_set:
        destinations.append("slack")
    if config.sns_topic_arn:
        destinations.append("sns")
    return Alerter(
        destinations=destinations,
        slack_webhook_url=EnvVar("ALERT_SLACK_WEBHOOK_URL") if config.slack_webhook_set else None,
        sns_topic_arn=config.sns_topic_arn,
        webserver_url=config.webserver_url,
        **aws,
    )


def quicksight_export(config: Settings, **aws: str | None) -> QuickSightExport:
    return QuickSightExport(
        prefix=config.quicksight_prefix,
        account_id=config.quicksight_account_id,
        dataset_ids=config.quicksight_dataset_ids,
        **aws,
    )


def local_resources(config: Settings) -> dict[str, object]:
    """The prod resources given the embedded stack's loopback endpoints, DSN and catalog as data.

    The stack is the one running under SMARTGO_HOME (`smartgo-analytics dev` or `demo` start it);
    without one, the resources that need it fail when a run uses them, saying how to start it.
    Objects live in the lake directory either way, so what a demo wrote stays readable.
    """
    home = smartgo_home(config.smartgo_home)
    object_store = LocalObjectStore(lake_dir=str(home / "lake"), bucket=LOCAL_BUCKET)
    resources: dict[str, object] = {
        "object_store": object_store,
        "parquet_io_manager": ParquetIOManager(object_store=object_store),
        "image_fetcher": ImageFetcher(
            allowlist=["127.0.0.1", "localhost", *config.image_url_allowlist]
        ),
        "image_embedder": LocalVisualEmbedder(
            stands_for=config.embedding_model,
            dimension=config.embedding_dimension,
            max_concurrency=config.bedrock_max_concurrency,
        ),
        "quicksight": quicksight_export(config),
        # No Bedrock here: a range of fewer than BEDROCK_BATCH_MIN_IMAGES is embedded on demand.
        "bedrock_batch": BedrockBatch(min_images=config.bedrock_batch_min_images),
    }
    try:
        stack = running_stack(home)
    except StackError as error:
        needs_stack = _fails_with(str(error))
        return resources | {
            "sales_source": needs_stack,
            "sales_data": needs_stack,
            "export_progress": needs_stack,
            "image_vectors": needs_stack,
            "iceberg": needs_stack,
            "alerter": alerter(config),
        }
    aws = stack.aws_options
    return resources | {
        "sales_source": SALES_SOURCES[config.sales_source](config, stack),
        "sales_data": SalesDataTable(table_name=config.dynamodb_table, **aws),
        "export_progress": ExportProgressTracker(
            table_name=config.export_progress_table or EXPORT_PROGRESS_TABLE, **aws
        ),
        "image_vectors": ImageVectors(
            table_name=config.image_vectors_table or IMAGE_VECTORS_TABLE, **aws
        ),
        "iceberg": IcebergCatalog(properties=stack.iceberg_properties),
        "alerter": alerter(config, **aws),
    }


def database_source(config: Settings, stack: StackInfo | None) -> SmartGoDatabase:
    """The SmartGo Postgres: the local stack's, or SMARTGO_DATABASE_URL / SMARTGO_DB_SSM_PARAMETER."""
    if stack is not None:
        return SmartGoDatabase(dsn=stack.postgres_uri, tenant=config.tenant)
    if config.database_url_set == bool(config.db_ssm_parameter):
        raise ConfigurationError(
            "set exactly one of SMARTGO_DATABASE_URL or SMARTGO_DB_SSM_PARAMETER"
        )
    return SmartGoDatabase(
        dsn=EnvVar("SMARTGO_DATABASE_URL") if config.database_url_set else None,
        ssm_parameter_name=config.db_ssm_parameter,
        tenant=config.tenant,
        region_name=config.aws_region,
    )


def api_source(config: Settings, stack: StackInfo | None) -> SmartGoApi:
    """The SmartGo API: SMARTGO_API_URL with its token and options, or the local stack's own."""
    url = config.api_url or (stack.sales_api_url if stack is not None else None)
    if not url:
        raise ConfigurationError(
            "SMARTGO_API_URL is not set (required when SMARTGO_SALES_SOURCE=api)"
        )
    token: str | None = EnvVar("SMARTGO_API_TOKEN") if config.api_token_set else None
    if token is None and stack is not None and not config.api_url:
        token = stack.sales_api_token
    try:
        source = SmartGoApi(
            url=url,
            pagination=config.api_pagination,
            tenant=config.tenant,
            token=token,
            token_ssm_parameter=config.api_token_ssm,
            region_name=config.aws_region,
            **config.api_options,
        )
        source.check()
    except SalesApiError as error:
        raise ConfigurationError(str(error)) from None
    except ValidationError as error:  # an option it does not know, or of the wrong type
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3]
        )
        raise ConfigurationError(f"SMARTGO_API_OPTIONS: {problems}") from None
    return source


# Where the day's sales come from, by SMARTGO_SALES_SOURCE: a new source is a module and a line.
SALES_SOURCES: dict[str, Callable[[Settings, StackInfo | None], SalesSource]] = {
    "database": database_source,
    "api": api_source,
}


def _fails_with(message: str) -> ResourceDefinition:
    def fail(_context):
        raise StackError(message)

    return ResourceDefinition(resource_fn=fail, description=message)


def prod_resources(config: Settings) -> dict[str, object]:
    """AWS: S3, DynamoDB, Bedrock Titan, the SmartGo Postgres and an Iceberg catalog."""
    if not config.s3_bucket:
        raise ConfigurationError("S3_BUCKET is not set (required when SMARTGO_DEPLOYMENT=prod)")
    catalog_properties = config.configured_catalog()
    region = config.aws_region
    object_store = S3ObjectStore(bucket=config.s3_bucket, region_name=region)
    return {
        "sales_source": SALES_SOURCES[config.sales_source](config, None),
        "sales_data": SalesDataTable(table_name=config.dynamodb_table, region_name=region),
        "export_progress": ExportProgressTracker(
            table_name=config.export_progress_table, region_name=region
        ),
        "image_vectors": ImageVectors(table_name=config.image_vectors_table, region_name=region),
        "object_store": object_store,
        "parquet_io_manager": ParquetIOManager(object_store=object_store),
        "image_fetcher": ImageFetcher(allowlist=config.image_url_allowlist),
        "image_embedder": BedrockEmbedder(
            model=config.embedding_model,
            price_per_image_usd=config.embedding_price_per_image,
            dimension=config.embedding_dimension,
            max_concurrency=config.bedrock_max_concurrency,
            requests_per_minute=config.bedrock_requests_per_minute,
            tokens_per_minute=config.bedrock_tokens_per_minute,
            region_name=region,
        ),
        "iceberg": IcebergCatalog(properties=catalog_properties),
        "bedrock_batch": BedrockBatch(
            role_arn=config.bedrock_batch_role_arn,
            min_images=config.bedrock_batch_min_images,
            region_name=region,
        ),
        "quicksight": quicksight_export(config, region_name=region),
        "alerter": alerter(config, region_name=region),
    }
