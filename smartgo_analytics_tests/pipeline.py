"""What tests and benchmarks both use to drive the pricing pipeline: SmartGo products written to
the embedded Postgres, the pipeline's resources against the loopback servers, a day run and read
back. Support, not tests: no fixture, nothing set at import."""

import contextlib
from datetime import UTC, datetime, timedelta

import psycopg
from botocore.exceptions import ClientError
from dagster import materialize

from smartgo_analytics.assets.pricing_intelligence import (
    product_image_embeddings,
    smartgo_sales,
    smartgo_sales_iceberg,
)
from smartgo_analytics.core.sales import SOURCE_COLUMNS
from smartgo_analytics.resources.dynamodb import (
    ExportProgressTracker,
    ImageVectors,
    create_image_vectors_table,
)
from smartgo_analytics.resources.embeddings import BedrockEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.images import ImageFetcher
from smartgo_analytics.resources.object_store import S3ObjectStore
from smartgo_analytics.resources.parquet_io import ParquetIOManager
from smartgo_analytics.resources.postgres import SmartGoDatabase

ASSETS = [smartgo_sales, product_image_embeddings, smartgo_sales_iceberg]


def insert_products(postgres_uri: str, rows: list[dict]) -> None:
    columns = (*SOURCE_COLUMNS, "status")
    with psycopg.connect(postgres_uri) as conn:
        for row in rows:
            values = {c: row.get(c) for c in columns}
            conn.execute(
                f"INSERT INTO smartgo.products ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
                "ON CONFLICT (id) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns[1:]),
                tuple(values.values()),
            )


def sale(product_id: str, day: str, image_url: str, **overrides) -> dict:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    row = {
        "id": product_id,
        "tenant_id": "carousel-labs",
        "category": "Electronics",
        "brand": "Sony",
        "condition": "Good",
        "sold_price": "120.50",
        "sold_date": start + timedelta(hours=10),
        "image_url": image_url,
        "description": "Très bon état",
        "status": "SOLD",
    }
    row.update(overrides)
    return row


def resources(stack, bucket, bedrock, cdn, tmp_path, progress_table=None, **fetcher):
    store = S3ObjectStore(
        bucket=bucket, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    # The image vectors of this test alone: another test's images are not found in them.
    vectors = ImageVectors(
        table_name=f"vectors-{bucket}", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    with contextlib.suppress(ClientError):  # already made for this bucket
        create_image_vectors_table(vectors.boto3_client("dynamodb"), vectors.table_name)
    return {
        "image_vectors": vectors,
        "sales_source": SmartGoDatabase(dsn=stack.postgres_uri),
        "object_store": store,
        "parquet_io_manager": ParquetIOManager(object_store=store),
        "image_fetcher": ImageFetcher(
            allowlist=["localhost"], timeout_s=1.0, backoff_base_s=0.05, **fetcher
        ),
        "image_embedder": BedrockEmbedder(
            endpoint_url=bedrock, region_name="us-east-1", model_timeout_backoff_s=0.05
        ),
        "iceberg": IcebergCatalog(
            properties={
                "type": "sql",
                "uri": f"sqlite:///{tmp_path}/catalog.db",
                "warehouse": (tmp_path / "warehouse").as_uri(),
            }
        ),
        "export_progress": ExportProgressTracker(
            table_name=progress_table, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
        ),
    }


def run(res, day, raise_on_error=True, **embedding_config):
    run_config = None
    if embedding_config:
        run_config = {"ops": {"product_image_embeddings": {"config": embedding_config}}}
    return materialize(
        ASSETS,
        resources=res,
        partition_key=day,
        raise_on_error=raise_on_error,
        run_config=run_config,
    )


def day_rows(res, day):
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    table = res["iceberg"].read_day(start, start + timedelta(days=1))
    return {row["product_id"]: row for row in table.to_pylist()} if table is not None else {}
