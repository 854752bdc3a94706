"""The `prod` deployment, end to end, against AWS-compatible servers on 127.0.0.1.

The resources are the ones `SMARTGO_DEPLOYMENT=prod` builds from the environment, nothing patched:
moto over HTTP for S3, DynamoDB, SSM, Glue and QuickSight (reached through `AWS_ENDPOINT_URL`), the
embedded PostgreSQL configured through the SSM SecureString JSON, the Bedrock-compatible server
(`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`) and the image CDN. The Iceberg table lives in the Glue catalog
with its warehouse on `s3://`.
"""

import html
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import psycopg
import pytest
from boto3.dynamodb.types import TypeSerializer
from dagster import AssetKey, DagsterInstance, materialize
from pyiceberg.catalog import load_catalog

from smartgo_analytics.core.alerts import Alert
from smartgo_analytics.core.quicksight import DATASETS
from smartgo_analytics.deployment import this_deployment
from smartgo_analytics.local.demo_data import sales_data_items
from smartgo_analytics.local.stack import create_progress_table, create_sales_table
from smartgo_analytics.resources.dynamodb import create_image_vectors_table
from smartgo_analytics.settings import settings
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.aws_calls import (
    in_processes,
    not_allowed,
    recorded_aws_calls,
    recorded_in,
)
from smartgo_analytics_tests.pipeline import insert_products, sale

DAY = "2025-10-20"
BUCKET = "smartgo-prod-e2e"
SSM_PARAMETER = "/tf/prod/smartgo/database/config"
ACCOUNT = "123456789012"
DATASET_IDS = {spec.name: f"qs-{spec.name}" for spec in DATASETS}


def fresh_glue_database(glue) -> None:
    """The Glue database the stack makes, with no table yet: a prod day starts with none (another
    deployment's test of the session may have left its tables, on its own bucket)."""
    if "pricing_intelligence" not in [d["Name"] for d in glue.get_databases()["DatabaseList"]]:
        glue.create_database(DatabaseInput={"Name": "pricing_intelligence"})
    for table in glue.get_tables(DatabaseName="pricing_intelligence")["TableList"]:
        glue.delete_table(DatabaseName="pricing_intelligence", Name=table["Name"])


@pytest.fixture
def prod_resources(stack):
    """What the production stack makes (deploy/smartgo_deploy), made here by hand: the bucket,
    the tables the pipeline owns and the alert topic (test_deploy.py has the stack make them)."""
    aws = boto3.Session(region_name="us-east-1")
    endpoint = {"endpoint_url": stack.aws_endpoint_url}
    aws.client("s3", **endpoint).create_bucket(Bucket=BUCKET)
    dynamodb = aws.client("dynamodb", **endpoint)
    existing = dynamodb.list_tables()["TableNames"]  # made by an earlier test of the session
    for name, create in (
        ("smartgo-export-progress-prod", create_progress_table),
        ("smartgo-image-vectors-prod", create_image_vectors_table),
    ):
        if name not in existing:
            create(dynamodb, name)
    topic = aws.client("sns", **endpoint).create_topic(Name="smartgo-prod-alerts")["TopicArn"]
    fresh_glue_database(aws.client("glue", **endpoint))
    return {
        "S3_BUCKET": BUCKET,
        "EXPORT_PROGRESS_TABLE_NAME": "smartgo-export-progress-prod",
        "IMAGE_VECTORS_TABLE": "smartgo-image-vectors-prod",
        "ALERT_SNS_TOPIC_ARN": topic,
    }


@pytest.fixture
def prod_environment(prod_resources, stack, bedrock, cdn, cdn_state, monkeypatch):
    """AWS as a production deployment sees it, every endpoint on loopback. SalesData is an input
    of the pipeline (the stack names it, never makes it): written here, as SmartGo writes it."""
    aws = boto3.Session(region_name="us-east-1")
    endpoint = {"endpoint_url": stack.aws_endpoint_url}
    dynamodb = aws.client("dynamodb", **endpoint)
    if "SalesData-prod" not in dynamodb.list_tables()["TableNames"]:
        create_sales_table(dynamodb, "SalesData-prod")
    serializer = TypeSerializer()
    for item in sales_data_items(date.fromisoformat(DAY)):
        dynamodb.put_item(
            TableName="SalesData-prod", Item={k: serializer.serialize(v) for k, v in item.items()}
        )
    db = psycopg.conninfo.conninfo_to_dict(stack.postgres_uri)
    with psycopg.connect(
        stack.postgres_uri
    ) as conn:  # the embedded server trusts its socket anyway
        conn.execute("ALTER USER postgres PASSWORD 'prod-secret'")
    aws.client("ssm", **endpoint).put_parameter(
        Name=SSM_PARAMETER,
        Type="SecureString",
        Overwrite=True,
        Value=json.dumps(
            {
                "host": db["host"],
                "port": int(db.get("port", 5432)),
                "database": db["dbname"],
                "username": db["user"],
                "password": "prod-secret",
                "maxConnections": 5,
                "connectionTimeoutMs": 5000,
                "queryTimeoutMs": 30000,
            }
        ),
    )
    for n in range(6):
        cdn_state.images[f"/prod/{n}.png"] = servers.png(color=(40 * n, 200 - 30 * n, 90))
    insert_products(
        stack.postgres_uri,
        [
            sale(
                f"PROD-{n}",
                DAY,
                f"{cdn}/prod/{n % 6}.png",
                tenant_id=("carousel-labs", "northwind")[n % 2],
                sold_price=f"{20 + n}.50",
            )
            for n in range(12)
        ],
    )
    topic = prod_resources["ALERT_SNS_TOPIC_ARN"]
    sqs = aws.client("sqs", **endpoint)
    queue = sqs.create_queue(QueueName="smartgo-prod-alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    aws.client("sns", **endpoint).subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    environment = {
        **prod_resources,
        "SMARTGO_DEPLOYMENT": "prod",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": stack.aws_endpoint_url,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock,
        "SMARTGO_DB_SSM_PARAMETER": SSM_PARAMETER,
        "DYNAMODB_TABLE": "SalesData-prod",
        "BEDROCK_REQUESTS_PER_MINUTE": "3000",
        "ICEBERG_CATALOG_TYPE": "glue",
        "ICEBERG_WAREHOUSE": f"s3://{prod_resources['S3_BUCKET']}/warehouse",
        "ICEBERG_CATALOG_PROPERTIES": json.dumps({"s3.endpoint": stack.aws_endpoint_url}),
        "IMAGE_URL_ALLOWLIST": "localhost",
        "QUICKSIGHT_ACCOUNT_ID": ACCOUNT,
        "QUICKSIGHT_DATASET_IDS": json.dumps(DATASET_IDS),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    environment["queue"] = queue
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # AWS_REGION alone, which botocore does not read
    settings.cache_clear()
    yield environment
    settings.cache_clear()


def glue_table(environment, name: str = "smartgo_sales"):
    catalog = load_catalog(
        "check",
        type="glue",
        **{"client.region": "us-east-1"},
        warehouse=environment["ICEBERG_WAREHOUSE"],
        **json.loads(environment["ICEBERG_CATALOG_PROPERTIES"]),
    )
    return catalog.load_table(f"pricing_intelligence.{name}")


def test_one_day_of_every_asset_runs_on_the_prod_resources_and_again_changes_nothing(
    prod_environment, bedrock_calls, cdn, tmp_path, production_template
):
    from smartgo_analytics.definitions import assets

    BUCKET = prod_environment["S3_BUCKET"]  # noqa: N806  (the stack's, in test_deploy.py)
    with recorded_aws_calls() as actions:
        resources = this_deployment().resources()
        assert type(resources["object_store"]).__name__ == "S3ObjectStore"
        assert type(resources["image_embedder"]).__name__ == "BedrockEmbedder"

        instance = DagsterInstance.ephemeral()
        first = materialize(assets, resources=resources, partition_key=DAY, instance=instance)

    assert first.success and all(c.passed for c in first.get_asset_check_evaluations())
    assert bedrock_calls.calls == 6  # one per distinct image
    table = glue_table(prod_environment)
    rows = table.scan().to_arrow().sort_by("product_id").to_pylist()
    assert [r["product_id"] for r in rows] == sorted(f"PROD-{n}" for n in range(12))
    assert all(len(r["embedding_vector"]) == 1024 and r["embedding_error"] is None for r in rows)
    files = [task.file.file_path for task in table.scan().plan_files()]
    assert files and all(f.startswith(f"s3://{BUCKET}/warehouse/") for f in files)
    assert {f.split("/data/")[1].rsplit("/", 1)[0] for f in files} == {
        "tenant_id=carousel-labs/year=2025/month=10",
        "tenant_id=northwind/year=2025/month=10",
    }

    # Dagster's standard keys, read back from the instance: columns, rows, name and location.
    def stored(*key: str) -> dict:
        event = instance.get_latest_materialization_event(AssetKey(list(key)))
        return {name: value.value for name, value in event.asset_materialization.metadata.items()}

    sales = stored("smartgo_sales_iceberg")
    columns = {c.name: c for c in sales["dagster/column_schema"].columns}
    assert list(columns) == [f.name for f in table.schema().fields]
    assert columns["sold_price"].type == "double" and not columns["product_id"].constraints.nullable
    assert columns["embedding_error"].description == "why the sale has no vector"
    assert sales["dagster/table_name"] == "smartgo.pricing_intelligence.smartgo_sales"
    assert sales["dagster/uri"] == table.location() and table.location().startswith("s3://")
    assert sales["dagster/partition_row_count"] == 12 and sales["dagster/row_count"] == 12
    bands = stored("price_bands")
    assert {"median", "sales_count", "level"} <= {
        c.name for c in bands["dagster/column_schema"].columns
    }
    assert bands["dagster/table_name"] == "smartgo.pricing_intelligence.price_bands"
    assert bands["dagster/partition_row_count"] == bands["bands"] > 0
    handed_off = stored("smartgo_sales")
    assert handed_off["dagster/partition_row_count"] == 12
    assert handed_off["dagster/uri"] == f"s3://{BUCKET}/staging/smartgo_sales/{DAY}.parquet"
    assert stored("similarity_index")["dagster/row_count"] == 12

    s3 = boto3.client(
        "s3", endpoint_url=prod_environment["AWS_ENDPOINT_URL"], region_name="us-east-1"
    )
    for spec in DATASETS:
        exported = stored("quicksight", spec.name)
        assert [c.name for c in exported["dagster/column_schema"].columns] == list(spec.field_names)
        assert exported["dagster/uri"] == f"s3://{BUCKET}/quicksight/{spec.name}/{DAY}.json"
        day_file = s3.get_object(Bucket=BUCKET, Key=f"quicksight/{spec.name}/{DAY}.json")[
            "Body"
        ].read()
        assert exported["dagster/partition_row_count"] == len(day_file.splitlines()) > 0
        manifest = json.loads(
            s3.get_object(Bucket=BUCKET, Key=f"quicksight/manifests/{spec.name}.json")[
                "Body"
            ].read()
        )
        (uris,) = [location["URIs"] for location in manifest["fileLocations"]]
        assert uris == [f"s3://{BUCKET}/quicksight/months/{spec.name}/2025-10.json"]
        lines = s3.get_object(Bucket=BUCKET, Key=f"quicksight/months/{spec.name}/2025-10.json")
        records = [json.loads(line) for line in lines["Body"].read().decode().split("\n") if line]
        assert records and {r["date"] for r in records} == {DAY}
        metadata = first.asset_materializations_for_node(f"quicksight__{spec.name}")[0].metadata
        assert metadata["spice_data_set_id"].value == DATASET_IDS[spec.name]
        assert metadata["spice_ingestion_status"].value == "INITIALIZED"
        assert metadata["spice_ingestion_id"].value.startswith(f"smartgo-{spec.name}-{DAY}-")

    # The comparables command on the prod deployment: the index's segments fetched from S3 into
    # the home's cache; a picture's URL fetched and embedded by Bedrock. Its AWS calls and the
    # page's are recorded, each in its process, for the page's role.
    (tmp_path / "site").mkdir()
    recording = in_processes(tmp_path / "site", tmp_path / "page-calls")
    reading = {**os.environ, "SMARTGO_HOME": str(tmp_path / "home"), **recording}

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "smartgo_analytics.cli", "comparables", *args],
            env=reading,
            capture_output=True,
            text=True,
            timeout=120,
        )

    asked = command("--product-id", "PROD-3", "--k", "3", "--format", "json")
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    items = answer["comparables"]
    assert answer["tenant"] == "northwind" and len(items) == 3
    assert items[0]["product_id"] == "PROD-9" and items[0]["similarity"] == pytest.approx(
        1.0, abs=1e-3
    )
    assert "PROD-3" not in [i["product_id"] for i in items]
    assert {i["product_id"] for i in items} <= {f"PROD-{n}" for n in range(1, 12, 2)}
    assert list((tmp_path / "home" / "cache" / "similarity_index").iterdir())
    calls = bedrock_calls.calls
    by_picture = command(
        "--image", f"{cdn}/prod/4.png", "--tenant", "carousel-labs", "--k", "2", "--format", "json"
    )
    assert by_picture.returncode == 0, by_picture.stderr
    assert bedrock_calls.calls == calls + 1
    first = json.loads(by_picture.stdout)["comparables"][0]
    assert first["product_id"] in {"PROD-4", "PROD-10"} and first["similarity"] > 0.999
    unknown = command("--product-id", "PROD-nothing")
    assert unknown.returncode == 2 and unknown.stderr.strip().endswith(
        "unknown product 'PROD-nothing': no sold item has that id"
    )

    # The comparables page on the prod deployment, started as a person starts it: the answer of
    # the command, pictures presigned on S3 (and served by it), a sale's row from the Glue table.
    port = servers.free_port()
    page = subprocess.Popen(
        [sys.executable, "-m", "smartgo_analytics.cli", "web", "--port", str(port)],
        env=reading,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                api = httpx.get(f"{url}/api/comparables", params={"product_id": "PROD-3", "k": 3})
                break
            except httpx.TransportError:
                assert page.poll() is None and time.monotonic() < deadline, page.stderr.read()
                time.sleep(0.1)
        assert api.status_code == 200 and api.json() == answer, api.text
        shown = httpx.get(f"{url}/", params={"product_id": "PROD-3", "k": 3}).text
        pictures = re.findall(r'class="comparable-picture" src="([^"]+)"', shown)
        assert len(pictures) == 3 and all("X-Amz-Signature=" in p for p in pictures), shown[-800:]
        served = httpx.get(html.unescape(pictures[0]))
        assert served.status_code == 200 and served.content[:3] in (b"\xff\xd8\xff", b"\x89PN")
        row = httpx.get(f"{url}/api/sales/PROD-9").json()
        assert row[0]["product_id"] == "PROD-9" and row[0]["tenant_id"] == "northwind"
        # Twenty people at once on each route: the catalog is opened once, never per request.
        routes = [
            "/api/sales/PROD-9",
            "/api/comparables?product_id=PROD-3&k=3",
            "/?product_id=PROD-3",
        ]
        with ThreadPoolExecutor(20) as people:
            statuses = list(
                people.map(lambda r: httpx.get(f"{url}{r}", timeout=60).status_code, routes * 20)
            )
        assert statuses == [200] * 60
    finally:
        page.terminate()
        page.wait(30)

    # SQL and reads over the lake on S3, as a production user asks them: DuckDB reads the files the
    # Glue catalog's current metadata names, from S3; the same counts as pyiceberg.
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "smartgo_analytics.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SMARTGO_HOME": str(tmp_path / "home")},
        )

    started = time.perf_counter()
    # A test on the vector itself too: DuckDB's Iceberg scan once pruned every file for it.
    sql = cli(
        "sql",
        "SELECT tenant_id, count(*) AS sales, count(embedding_vector) AS with_vector "
        "FROM smartgo_sales WHERE embedding_vector IS NOT NULL GROUP BY 1 ORDER BY 1",
        "--format",
        "json",
    )
    sql_s = time.perf_counter() - started
    assert sql.returncode == 0, sql.stderr
    by_tenant = {}
    for row in rows:
        by_tenant[row["tenant_id"]] = by_tenant.get(row["tenant_id"], 0) + 1
    assert [json.loads(line) for line in sql.stdout.splitlines()] == [
        {"tenant_id": t, "sales": n, "with_vector": n} for t, n in sorted(by_tenant.items())
    ], sql.stdout
    print(f"prod sql against moto S3 + Glue: {sql_s:.2f} s")
    bands_rows = glue_table(prod_environment, "price_bands").scan().to_arrow().num_rows
    counted = cli(
        "sql", "SELECT count(*) AS n FROM pricing_intelligence.price_bands", "--format", "csv"
    )
    assert counted.returncode == 0 and counted.stdout == f"n\n{bands_rows}\n", counted.stderr
    bad = cli("sql", "SELECT nothing FROM smartgo_sales")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "the query failed" in bad.stderr and "Traceback" not in bad.stderr
    read = cli(
        "query", "price_bands", "--columns", "tenant_id,median", "--limit", "3", "--format", "json"
    )
    assert read.returncode == 0 and len(read.stdout.splitlines()) == 3, read.stderr

    progress = boto3.client(
        "dynamodb", endpoint_url=prod_environment["AWS_ENDPOINT_URL"], region_name="us-east-1"
    ).get_item(
        TableName=prod_environment["EXPORT_PROGRESS_TABLE_NAME"],
        Key={"PK": {"S": f"EXPORT#{DAY}"}, "SK": {"S": "METADATA"}},
    )["Item"]
    assert progress["status"]["S"] == "COMPLETE" and progress["totalCount"]["N"] == "12"

    # The prod alerter publishes to SNS in the deployment's region.
    with recorded_aws_calls() as alerting:
        resources["alerter"].send(
            Alert(title="SmartGo analytics: test", error="none", partition=DAY)
        )
    (message,) = boto3.client(
        "sqs", endpoint_url=prod_environment["AWS_ENDPOINT_URL"], region_name="us-east-1"
    ).receive_message(QueueUrl=prod_environment["queue"])["Messages"]
    assert f"partition: {DAY}" in json.loads(message["Body"])["Message"]

    snapshot = table.current_snapshot().snapshot_id
    with recorded_aws_calls() as again:
        second = materialize(assets, resources=this_deployment().resources(), partition_key=DAY)

    assert second.success
    table = glue_table(prod_environment)
    assert table.current_snapshot().snapshot_id == snapshot
    assert table.scan().to_arrow().sort_by("product_id").to_pylist() == rows

    # Every AWS action the runs made is one the stack's run task role allows, and the alert's is
    # the code location's (deploy/smartgo_deploy/access.py; the template as synthesized).
    assert len(actions | again) >= 15, sorted(actions | again)
    assert not_allowed(actions | again, production_template, "RunTaskRole") == set()
    assert alerting == {"sns:Publish"}
    assert not_allowed(alerting, production_template, "CodeLocationRole") == set()
    # The page and the comparables command read what the page's role allows.
    page_calls = recorded_in(tmp_path / "page-calls")
    assert {"s3:GetObject", "glue:GetTable", "bedrock:InvokeModel"} <= page_calls, page_calls
    assert not_allowed(page_calls, production_template, "PageRole") == set()


class ConfigRecorder(BaseHTTPRequestHandler):
    """An Iceberg REST catalog's config endpoint that only records who asked."""

    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append((self.path, dict(self.headers)))
        body = json.dumps({"defaults": {}, "overrides": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_the_s3_tables_settings_sign_the_catalog_requests_for_s3tables_in_the_region(monkeypatch):
    ConfigRecorder.requests = []
    server = servers.start(ConfigRecorder)
    warehouse = "arn:aws:s3tables:eu-west-1:123456789012:bucket/carousel-analytics"
    # The README's S3 Tables settings, the endpoint moved to a loopback listener.
    for name, value in {
        "SMARTGO_DEPLOYMENT": "prod",
        "S3_BUCKET": "carousel-analytics",
        "SMARTGO_DATABASE_URL": "postgresql://reader@db.internal/smartgo",
        "AWS_REGION": "eu-west-1",
        "ICEBERG_CATALOG_TYPE": "rest",
        "ICEBERG_CATALOG_URI": f"http://127.0.0.1:{server.server_port}/iceberg",
        "ICEBERG_WAREHOUSE": warehouse,
        "ICEBERG_CATALOG_PROPERTIES": json.dumps(
            {
                "rest.sigv4-enabled": "true",
                "rest.signing-name": "s3tables",
                "rest.signing-region": "eu-west-1",
            }
        ),
    }.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    try:
        this_deployment().resources()["iceberg"].catalog()
    finally:
        settings.cache_clear()
        server.shutdown()
        server.server_close()

    path, headers = ConfigRecorder.requests[0]
    assert urlsplit(path).path == "/iceberg/v1/config"
    assert parse_qs(urlsplit(path).query) == {"warehouse": [warehouse]}
    today = datetime.now(UTC)
    scopes = {
        f"Credential=testing/{day:%Y%m%d}/eu-west-1/s3tables/aws4_request"
        for day in (today, today - timedelta(minutes=5))
    }
    authorization = headers["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 ")
    assert any(scope in authorization for scope in scopes), authorization


def test_the_api_source_gives_the_databases_table_for_the_same_day(
    prod_environment, bedrock_calls, stack, cdn, monkeypatch
):
    """SMARTGO_SALES_SOURCE=api on the prod resources (its token an SSM SecureString), against a
    SmartGo API over the same database: the day's rows, quarantine and vectors are the same."""
    from smartgo_analytics.assets.pricing_intelligence import (
        product_image_embeddings,
        smartgo_sales,
        smartgo_sales_iceberg,
    )
    from smartgo_analytics.local.sales_api import serve_sales_api

    pricing = [smartgo_sales, product_image_embeddings, smartgo_sales_iceberg]
    day = "2025-10-23"
    rows = [sale(f"BOTH-{n}", day, f"{cdn}/prod/{n % 6}.png") for n in range(9)]
    rows[4]["sold_price"] = None  # quarantined by both
    insert_products(stack.postgres_uri, rows)

    def materialised() -> tuple[list[dict], dict]:
        result = materialize(pricing, resources=this_deployment().resources(), partition_key=day)
        assert result.success
        sales = result.asset_materializations_for_node("smartgo_sales")[0].metadata
        table = glue_table(prod_environment).scan(row_filter="product_id LIKE 'BOTH-%'")
        kept = table.to_arrow().drop_columns(["ingestion_timestamp"]).sort_by("product_id")
        return kept.to_pylist(), {k: v.value for k, v in sales.items()}

    by_database, database_metadata = materialised()
    server = serve_sales_api(stack.postgres_uri, "api-secret-token")
    boto3.client("ssm", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1").put_parameter(
        Name="/tf/prod/smartgo/api/token", Type="SecureString", Value="api-secret-token",
        Overwrite=True,
    )  # fmt: skip
    for name, value in {
        "SMARTGO_SALES_SOURCE": "api",
        "SMARTGO_API_URL": server.url,
        "SMARTGO_API_TOKEN_SSM": "/tf/prod/smartgo/api/token",
        "SMARTGO_API_OPTIONS": json.dumps({"page_size": 4}),
    }.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    try:
        assert type(this_deployment().resources()["sales_source"]).__name__ == "SmartGoApi"
        by_api, api_metadata = materialised()
    finally:
        server.shutdown()
        server.server_close()
    assert len(by_database) == 8 and by_api == by_database
    assert api_metadata["source"] == "api" and database_metadata["source"] == "database"
    for name in ("valid_rows", "quarantined_rows", "quarantined_examples"):
        assert api_metadata[name] == database_metadata[name], name
    assert "api-secret-token" not in json.dumps(api_metadata, default=str)
