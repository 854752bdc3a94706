"""QuickSight exports against moto over HTTP (S3 and DynamoDB) and against the local lake directory."""

import json
from decimal import Decimal
from http.server import BaseHTTPRequestHandler

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from dagster import (
    AssetCheckKey,
    AssetKey,
    Definitions,
    define_asset_job,
    instance_for_test,
    materialize,
)

from smartgo_analytics.assets.quicksight import dynamodb_daily_metrics, quicksight_datasets
from smartgo_analytics.local.demo_data import sales_data_items
from smartgo_analytics.local.stack import create_sales_table
from smartgo_analytics.resources.dynamodb import SalesDataTable
from smartgo_analytics.resources.object_store import LocalObjectStore, S3ObjectStore
from smartgo_analytics.resources.quicksight import QuickSightExport
from smartgo_analytics_tests import servers

ASSETS = [dynamodb_daily_metrics, *quicksight_datasets]
DATASETS = ("store_summaries", "top_products", "anomalies", "trends", "recommendations")


@pytest.fixture
def table(stack, request):
    name = f"SalesData-{request.node.name[:40]}"
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    create_sales_table(dynamodb, name)
    return name


def put_items(stack, table, items):
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    serializer = TypeSerializer()
    for item in items:
        dynamodb.put_item(
            TableName=table, Item={k: serializer.serialize(v) for k, v in item.items()}
        )


def s3_resources(stack, table, bucket):
    store = S3ObjectStore(
        bucket=bucket, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    return store, {
        "sales_data": SalesDataTable(
            table_name=table, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
        ),
        "object_store": store,
        "quicksight": QuickSightExport(prefix="quicksight/"),
    }


def lines(store, dataset, day):
    data = store.get_bytes(f"quicksight/{dataset}/{day}.json")
    return [json.loads(line) for line in data.decode().splitlines()]


def test_a_day_exports_five_ndjson_datasets_and_manifests_to_s3(stack, table, s3_bucket):
    from datetime import date

    put_items(stack, table, sales_data_items(date(2025, 2, 10)))
    store, res = s3_resources(stack, table, s3_bucket)

    result = materialize(ASSETS, resources=res, partition_key="2025-02-10")

    assert result.success
    stores = lines(store, "store_summaries", "2025-02-10")
    assert len(stores) == 11 and all(r["date"] == "2025-02-10" for r in stores)
    assert list(stores[0]) == [
        "date",
        "store_id",
        "store_name",
        "region",
        "total_revenue",
        "transaction_count",
        "avg_transaction_value",
        "items_sold",
        "unique_customers",
    ]
    top = lines(store, "top_products", "2025-02-10")
    assert len(top) == 20 and [r["rank"] for r in top] == list(range(1, 21))
    assert [r["revenue"] for r in top] == sorted((r["revenue"] for r in top), reverse=True)
    for dataset in DATASETS:
        manifest = json.loads(store.get_bytes(f"quicksight/manifests/{dataset}.json"))
        # February 2025 is a finished month: QuickSight reads it from one file of its days.
        month = f"quicksight/months/{dataset}/2025-02.json"
        assert manifest == {
            "fileLocations": [{"URIs": [f"s3://{s3_bucket}/{month}"]}],
            "globalUploadSettings": {"format": "JSON"},
        }
        assert store.get_bytes(month) == store.get_bytes(f"quicksight/{dataset}/2025-02-10.json")
        metadata = result.asset_materializations_for_node(f"quicksight__{dataset}")[0].metadata
        assert metadata["s3_uri"].value == f"s3://{s3_bucket}/quicksight/{dataset}/2025-02-10.json"
        assert metadata["records_exported"].value == len(lines(store, dataset, "2025-02-10"))
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_bad_items_become_nulls_or_skips_with_reasons_and_never_kill_the_day(
    stack, table, s3_bucket
):
    d = "2025-02-11"

    def store_item(store_id, **fields):
        return {
            "PK": f"STORE#{store_id}",
            "SK": f"DATE#{d}",
            "GSI1PK": f"DATE#{d}",
            "GSI1SK": f"STORE#{store_id}",
            "store_id": store_id,
            **fields,
        }

    huge = Decimal("12345678901234567890123456789012345678")
    put_items(
        stack,
        table,
        [
            store_item(
                "S01",
                store_name="Köln Ehrenfeld 東京",
                total_revenue=Decimal("10.5"),
                transaction_count=huge,
            ),
            store_item(
                "S02", total_revenue="lots", transaction_count=Decimal("3")
            ),  # string where a number belongs, missing name
            # DynamoDB itself refuses NaN numbers; a NaN arrives as text (core tests cover Decimal NaN).
            store_item("S03", total_revenue="NaN", transaction_count=Decimal("2.5")),
            {
                "PK": "STORE#S01-copy",
                "SK": f"DATE#{d}",
                "GSI1PK": f"DATE#{d}",
                "GSI1SK": "STORE#S01-copy",
                "store_id": "S01",
            },
            {
                "PK": f"INSIGHT#{d}",
                "SK": "WEIRD#1",
                "GSI1PK": f"DATE#{d}",
                "GSI1SK": "INSIGHT#WEIRD#1",
                "insight_id": "w1",
            },
        ],
    )
    store, res = s3_resources(stack, table, s3_bucket)

    result = materialize(ASSETS, resources=res, partition_key=d)

    assert result.success
    raw = store.get_bytes(f"quicksight/store_summaries/{d}.json").decode()
    assert "東京" in raw  # UTF-8, not escaped
    rows = {r["store_id"]: r for r in lines(store, "store_summaries", d)}
    assert set(rows) == {"S01", "S02", "S03"}  # the duplicate S01 is skipped
    # QuickSight's INTEGER is 64 bits: a 38-digit count would skip its row, so it is null.
    assert rows["S01"]["transaction_count"] is None and rows["S01"]["total_revenue"] == 10.5
    assert rows["S02"]["total_revenue"] is None and rows["S02"]["store_name"] is None
    assert rows["S03"]["total_revenue"] is None and rows["S03"]["transaction_count"] is None
    metadata = result.asset_materializations_for_node("quicksight__store_summaries")[0].metadata
    assert metadata["duplicates_skipped"].value == 1
    reasons = metadata["fields_nulled"].value
    assert "total_revenue: str where a number belongs: 2" in reasons
    assert "transaction_count: fraction where an integer belongs: 1" in reasons
    assert "transaction_count: integer outside the signed 64-bit range: 1" in reasons
    # An empty day writes no file (QuickSight reads no empty one) and no manifest names one.
    assert f"quicksight/anomalies/{d}.json" not in store.list_keys("quicksight/")
    assert not [
        k for k in store.list_keys("quicksight/") if k.startswith("quicksight/manifests/anomalies")
    ]
    assert (
        result.asset_materializations_for_node("quicksight__anomalies")[0]
        .metadata["records_exported"]
        .value
        == 0
    )


def test_pagination_reads_every_item_of_a_day_over_one_megabyte(stack, table, s3_bucket):
    d = "2025-02-12"
    padding = "x" * 4000
    put_items(
        stack,
        table,
        [
            {
                "PK": f"PRODUCT#P{n:04d}",
                "SK": f"DATE#{d}",
                "GSI1PK": f"DATE#{d}",
                "GSI1SK": f"PRODUCT#P{n:04d}",
                "product_id": f"P{n:04d}",
                "revenue": Decimal(n),
                "notes": padding,
            }
            for n in range(400)
        ],
    )
    store, res = s3_resources(stack, table, s3_bucket)

    result = materialize(ASSETS, resources=res, partition_key=d)

    daily = result.asset_materializations_for_node("dynamodb_daily_metrics")[0].metadata
    assert daily["items"].value == 400
    assert daily["pages_read"].value >= 2  # DynamoDB pages at 1 MB
    top = lines(store, "top_products", d)
    assert [r["product_id"] for r in top] == [f"P{n:04d}" for n in range(399, 379, -1)]


def test_exporting_a_day_twice_gives_byte_identical_files_in_the_local_lake(stack, table, tmp_path):
    from datetime import date

    put_items(stack, table, sales_data_items(date(2025, 2, 13)))
    store = LocalObjectStore(lake_dir=str(tmp_path), bucket="lake")
    res = {
        "sales_data": SalesDataTable(
            table_name=table, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
        ),
        "object_store": store,
        "quicksight": QuickSightExport(prefix="exports/qs/"),
    }
    materialize(ASSETS, resources=res, partition_key="2025-02-13")
    first = {
        ds: (tmp_path / "lake" / "exports/qs" / ds / "2025-02-13.json").read_bytes()
        for ds in DATASETS
    }

    materialize(ASSETS, resources=res, partition_key="2025-02-13")

    second = {
        ds: (tmp_path / "lake" / "exports/qs" / ds / "2025-02-13.json").read_bytes()
        for ds in DATASETS
    }
    assert first == second and all(
        first[ds] for ds in ("store_summaries", "top_products", "trends")
    )
    manifest = json.loads((tmp_path / "lake/exports/qs/manifests/trends.json").read_text())
    assert manifest["fileLocations"][0]["URIs"] == [
        (tmp_path / "lake/exports/qs/months/trends/2025-02.json").as_uri()
    ]


def test_a_number_field_is_a_json_float_on_every_line_and_an_integer_field_an_integer(
    stack, table, s3_bucket
):
    d = "2025-02-15"
    put_items(
        stack,
        table,
        [
            {
                "PK": f"STORE#S{n}",
                "SK": f"DATE#{d}",
                "GSI1PK": f"DATE#{d}",
                "GSI1SK": f"STORE#S{n}",
                "store_id": f"S{n}",
                "total_revenue": revenue,
                "avg_transaction_value": Decimal(7),
                "transaction_count": count,
            }
            for n, (revenue, count) in enumerate(
                [(Decimal("23187"), Decimal("12")), (Decimal("17694.37"), Decimal("9.0"))]
            )
        ],
    )
    store, res = s3_resources(stack, table, s3_bucket)

    result = materialize(ASSETS, resources=res, partition_key=d)

    raw = store.get_bytes(f"quicksight/store_summaries/{d}.json").decode().split("\n")
    assert '"total_revenue":23187.0' in raw[0] and '"avg_transaction_value":7.0' in raw[0]
    assert '"total_revenue":17694.37' in raw[1] and '"transaction_count":9,' in raw[1]
    rows = lines(store, "store_summaries", d)
    assert {type(r["total_revenue"]) for r in rows} == {float}
    assert {type(r["transaction_count"]) for r in rows} == {int}
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_re_exporting_a_day_rewrites_its_finished_month_and_the_manifest_names_a_file_a_month(
    stack, table, tmp_path
):
    from datetime import date

    store = LocalObjectStore(lake_dir=str(tmp_path), bucket="lake")
    res = {
        "sales_data": SalesDataTable(
            table_name=table, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
        ),
        "object_store": store,
        "quicksight": QuickSightExport(),
    }
    for day in (date(2025, 4, 29), date(2025, 4, 30), date(2025, 5, 1)):
        put_items(stack, table, sales_data_items(day))
        assert materialize(ASSETS, resources=res, partition_key=day.isoformat()).success
    april = "quicksight/months/store_summaries/2025-04.json"
    before = store.get_bytes(april)
    assert before == store.get_bytes(
        "quicksight/store_summaries/2025-04-29.json"
    ) + store.get_bytes("quicksight/store_summaries/2025-04-30.json")

    put_items(
        stack,
        table,
        [
            {
                "PK": "STORE#S-new",
                "SK": "DATE#2025-04-29",
                "GSI1PK": "DATE#2025-04-29",
                "GSI1SK": "STORE#S-new",
                "store_id": "S-new",
                "total_revenue": Decimal("5"),
            }
        ],
    )
    assert materialize(ASSETS, resources=res, partition_key="2025-04-29").success

    after = [json.loads(line) for line in store.get_bytes(april).decode().splitlines()]
    assert len(after) == len(before.splitlines()) + 1
    assert {r["date"] for r in after if r["store_id"] == "S-new"} == {"2025-04-29"}
    manifest = json.loads(store.get_bytes("quicksight/manifests/store_summaries.json"))
    assert manifest["fileLocations"][0]["URIs"] == [
        store.uri("quicksight/months/store_summaries/2025-04.json"),
        store.uri("quicksight/months/store_summaries/2025-05.json"),
    ]


def test_a_missing_table_fails_with_the_table_named(stack, s3_bucket):
    store, res = s3_resources(stack, "NoSuchSalesTable", s3_bucket)
    result = materialize(
        [dynamodb_daily_metrics], resources=res, partition_key="2025-02-14", raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "DynamoDB table 'NoSuchSalesTable' does not exist" in str(
        failure.step_failure_data.error
    )


def test_a_single_run_backfill_exports_several_days_in_one_run(stack, table, s3_bucket):
    from datetime import date

    days = [date(2025, 3, d) for d in (1, 2, 3, 4)]
    for day in days:
        put_items(stack, table, sales_data_items(day))
    store, res = s3_resources(stack, table, s3_bucket)

    job = define_asset_job("backfill", selection=ASSETS)
    defs = Definitions(assets=ASSETS, jobs=[job], resources=res)
    with instance_for_test() as instance:
        result = defs.resolve_job_def("backfill").execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": "2025-03-01",
                "dagster/asset_partition_range_end": "2025-03-04",
            },
        )
        assert result.success
        # One step saw all four days (the single-run backfill policy at work), and each day's
        # materialisation has that day's own figures.
        trends = result.asset_materializations_for_node("quicksight__trends")
        assert {m.metadata["days_in_run"].value for m in trends} == {4}
        assert sorted(m.partition for m in trends) == [d.isoformat() for d in days]
        for m in trends:
            assert m.metadata["records_exported"].value == len(lines(store, "trends", m.partition))
            assert m.metadata["s3_uri"].value.endswith(f"/trends/{m.partition}.json")
        daily = result.asset_materializations_for_node("dynamodb_daily_metrics")[0].metadata
        assert daily["items_in_run"].value == sum(len(sales_data_items(d)) for d in days)
        materialized = instance.get_materialized_partitions(AssetKey(["quicksight", "trends"]))
        # One result per day and check, each naming its day; none unpartitioned or skipped.
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey(["quicksight", "trends"]), "file_matches_source"), limit=20
        )
    assert materialized == {"2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04"}
    assert sorted((r.partition, r.status.value) for r in history) == [
        (day, "SUCCEEDED") for day in ("2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04")
    ]
    evaluations = result.get_asset_check_evaluations()
    assert {
        (e.asset_key.path[-1], e.check_name) for e in evaluations if e.partition is None
    } == set()
    assert len(evaluations) == 5 * 4  # five datasets, four days
    for day in days:
        assert len(lines(store, "store_summaries", day.isoformat())) == 11


class QuickSightRecorder(BaseHTTPRequestHandler):
    """QuickSight's API as far as CreateIngestion goes: every request recorded, each answered."""

    requests: list = []

    def log_message(self, *args):
        pass

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).requests.append(("PUT", self.path))
        ingestion = self.path.rsplit("/", 1)[-1]
        body = json.dumps({"IngestionId": ingestion, "IngestionStatus": "QUEUED", "Status": 201})
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_POST = do_GET = do_PUT


def test_spice_refresh_is_called_only_for_configured_data_sets_with_one_id_per_partition_and_run(
    stack, table, s3_bucket
):
    from datetime import date

    put_items(stack, table, sales_data_items(date(2025, 2, 16)))
    QuickSightRecorder.requests = []
    server = servers.start(QuickSightRecorder)
    endpoint = {
        "endpoint_url": f"http://127.0.0.1:{server.server_port}",
        "region_name": "us-east-1",
    }
    store, res = s3_resources(stack, table, s3_bucket)
    try:
        res["quicksight"] = QuickSightExport(dataset_ids={"trends": "qs-trends"}, **endpoint)
        assert materialize(ASSETS, resources=res, partition_key="2025-02-16").success
        assert QuickSightRecorder.requests == []  # no account id: nothing is called

        res["quicksight"] = QuickSightExport(
            account_id="123456789012", dataset_ids={"trends": "qs-trends"}, **endpoint
        )
        result = materialize(ASSETS, resources=res, partition_key="2025-02-16")
    finally:
        server.shutdown()
        server.server_close()

    run_id = result.run_id
    assert QuickSightRecorder.requests == [
        (
            "PUT",
            f"/accounts/123456789012/data-sets/qs-trends/ingestions/smartgo-trends-2025-02-16-{run_id}",
        )
    ]
    metadata = result.asset_materializations_for_node("quicksight__trends")[0].metadata
    assert metadata["spice_ingestion_status"].value == "QUEUED"
    other = result.asset_materializations_for_node("quicksight__anomalies")[0].metadata
    assert "spice_ingestion_id" not in other


def test_records_without_a_usable_identity_are_skipped_and_any_text_survives_the_files(
    stack, table, s3_bucket
):
    d = "2025-02-17"

    def store(store_id, name="x"):
        return {
            "PK": f"STORE#{store_id!s:.20}",
            "SK": f"DATE#{d}",
            "GSI1PK": f"DATE#{d}",
            "GSI1SK": f"STORE#{store_id!s:.20}",
            "store_id": store_id,
            "store_name": name,
        }

    # (A lone surrogate is not valid UTF-8: DynamoDB refuses it; the NDJSON core test covers it.)
    texts = {
        "separators": "a\u2028b\u2029c\u0085d\ne\rf",
        "controls": "nul\x00bell\x07esc\x1b",
        "right-to-left": "\u202eשלום\u202c مرحبا",
        "long": "ü" * 200_000,
        "emoji": "\U0001f6d2 cart",
    }
    put_items(
        stack,
        table,
        [store(f"S-{name}", text) for name, text in texts.items()]
        + [
            store(["S1"]),
            store({"id": "S2"}),
            store(True),
            store(" "),
            store(None),
            store(Decimal("3.5")),
            store(Decimal("7"), "seven"),
        ],
    )
    store_, res = s3_resources(stack, table, s3_bucket)

    result = materialize(ASSETS, resources=res, partition_key=d)

    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    raw = store_.get_bytes(f"quicksight/store_summaries/{d}.json")
    records = [json.loads(line) for line in raw.decode().split("\n") if line]
    assert len(records) == raw.count(b"\n") == len(texts) + 1
    names = {r["store_id"]: r["store_name"] for r in records}
    assert names == {**{f"S-{name}": text for name, text in texts.items()}, "7": "seven"}
    metadata = result.asset_materializations_for_node("quicksight__store_summaries")[0].metadata
    assert metadata["items_without_identity"].value == 6
    reasons = metadata["items_without_identity_reasons"].value
    assert "store_id: a list, not a string or whole number: 1" in reasons
    assert "store_id: a float, not a string or whole number: 1" in reasons
