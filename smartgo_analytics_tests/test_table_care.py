"""Maintaining the Iceberg table: snapshot expiry, unreferenced files, compaction, on the SQL
catalog locally and the Glue catalog on moto, with the rows unchanged to the last vector."""

import hashlib
import os
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import boto3
import pyarrow as pa
import pytest

from smartgo_analytics.core import sales_table
from smartgo_analytics.core.table_care import Retention, path_of
from smartgo_analytics.core.units import parse_duration, parse_size
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics_tests.aws_calls import not_allowed, recorded_aws_calls
from smartgo_analytics_tests.test_iceberg_write import TENANTS, rows

FIRST = datetime(2025, 3, 2, tzinfo=UTC)
DAYS = [FIRST + timedelta(days=n) for n in range(30)]


def day_rows(day: datetime, price: float = 10.0) -> pa.Table:
    table = rows(6, first=int(day.timestamp()) % 10_000, price=price)
    sold = pa.array([day + timedelta(hours=n) for n in range(6)], pa.timestamp("us", tz="UTC"))
    ids = pa.array([f"P-{day:%m%d}-{n}" for n in range(6)])
    return (
        table.set_column(6, "sold_date", sold)
        .set_column(0, "product_id", ids)
        .cast(sales_table.ARROW_SCHEMA)
    )


def fill(catalog: IcebergCatalog, days: int = 30) -> None:
    """Thirty days, then one of them written again three times with other prices."""
    for day in DAYS[:days]:
        catalog.replace_day([day_rows(day)], day, day + timedelta(days=1))
    for price in (20.0, 30.0, 40.0):
        catalog.replace_day([day_rows(DAYS[9], price)], DAYS[9], DAYS[9] + timedelta(days=1))


def fingerprint(catalog: IcebergCatalog) -> tuple[int, str]:
    table = catalog.existing_sales_table().scan().to_arrow().sort_by([("product_id", "ascending")])
    return table.num_rows, hashlib.sha256(repr(table.to_pylist()).encode()).hexdigest()


def live_and_unreferenced(catalog: IcebergCatalog):
    table = catalog.existing_sales_table()
    files = table.inspect.files().to_pylist()
    location = table.location()
    filesystem = table.io.fs_by_scheme(location.split("://")[0], location.split("/")[2] or None)
    from pyarrow.fs import FileSelector, FileType

    listed = {
        i.path
        for i in filesystem.get_file_info(FileSelector(path_of(location), recursive=True))
        if i.type == FileType.File
    }
    referenced = {path_of(table.metadata_location)} | {
        path_of(e.metadata_file) for e in table.metadata.metadata_log
    }
    for snapshot in table.snapshots():
        referenced.add(path_of(snapshot.manifest_list))
        for manifest in snapshot.manifests(table.io):
            referenced.add(path_of(manifest.manifest_path))
            referenced |= {
                path_of(e.data_file.file_path) for e in manifest.fetch_manifest_entry(table.io)
            }
    return files, listed - referenced


def test_durations_and_sizes_are_read_as_the_command_takes_them():
    assert parse_duration("7d") == timedelta(days=7) and parse_duration("0s") == timedelta(0)
    assert parse_duration("36h") == timedelta(hours=36) and parse_size("128MB") == 128 * 2**20
    for bad in ("7", "d7", "1.5d", "-1d", "7 days"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_maintenance_on_the_sql_catalog_leaves_live_files_only_and_the_same_rows(tmp_path):
    catalog = IcebergCatalog(
        properties={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": (tmp_path / "warehouse").as_uri(),
        }
    )
    fill(catalog)
    before = fingerprint(catalog)
    files_before, _ = live_and_unreferenced(catalog)
    table = catalog.existing_sales_table()
    snapshots_before = len(table.snapshots())
    later = datetime.now(UTC) + timedelta(days=8)
    in_flight = (
        tmp_path
        / "warehouse"
        / "pricing_intelligence"
        / "smartgo_sales"
        / "data"
        / "in-flight.parquet"
    )
    in_flight.parent.mkdir(parents=True, exist_ok=True)
    in_flight.write_bytes(b"a writer's file, not committed yet")
    os.utime(in_flight, (later.timestamp() - 3600, later.timestamp() - 3600))

    report = catalog.maintain(
        Retention(timedelta(days=7), 2, timedelta(days=3), 128 * 2**20), now=later
    )

    assert fingerprint(catalog) == before
    files_after, unreferenced = live_and_unreferenced(catalog)
    assert len(files_before) > 30 * len(TENANTS) // 2 and len(files_after) == len(
        TENANTS
    )  # one a partition
    assert {
        p["tenant_id"]: (p["files_before"], p["files_after"]) for p in report.partitions_compacted
    } == {t: (30, 1) for t in TENANTS}
    # 33 writes (a re-written day adds a delete), then a delete and an append per compacted partition.
    assert snapshots_before == 36 and report.snapshots_left == 2
    assert report.snapshots_expired == snapshots_before + 2 * len(TENANTS) - 2
    assert unreferenced == {path_of(in_flight.as_uri())}  # kept: younger than the grace period
    assert (
        report.files_removed > 100 and report.bytes_freed > 0 and report.unreferenced_in_grace == 1
    )


def test_a_day_written_while_maintenance_compacts_is_kept_and_the_compaction_retried(tmp_path):
    catalog = IcebergCatalog(
        properties={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": (tmp_path / "warehouse").as_uri(),
        }
    )
    fill(catalog)
    day = DAYS[20]
    written = []

    def a_day_is_materialised_meanwhile(partition):
        if not written:
            written.append(catalog.replace_day([day_rows(day, 99.0)], day, day + timedelta(days=1)))

    report = catalog.maintain(
        Retention(timedelta(0), 1, timedelta(0), 128 * 2**20),
        on_group_read=a_day_is_materialised_meanwhile,
    )

    assert written and report.commit_retries == 1
    prices = {r["sold_price"] for r in catalog.read_day(day, day + timedelta(days=1)).to_pylist()}
    assert prices == {99.0 + n for n in range(6)}
    assert catalog.existing_sales_table().scan().to_arrow().num_rows == 30 * 6


def test_maintenance_on_the_glue_catalog_with_the_warehouse_on_s3(stack, monkeypatch):
    boto3.client("s3", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1").create_bucket(
        Bucket="care"
    )
    # A region of its own: the prod deployment's test has its table in us-east-1's Glue catalog.
    catalog = IcebergCatalog(
        properties={
            "type": "glue",
            "warehouse": "s3://care/warehouse",
            "client.region": "eu-central-1",
            "glue.endpoint": stack.aws_endpoint_url,
            "s3.endpoint": stack.aws_endpoint_url,
        }
    )
    fill(catalog, days=12)
    before = fingerprint(catalog)

    report = catalog.maintain(Retention(timedelta(0), 1, timedelta(0), 128 * 2**20))

    assert fingerprint(catalog) == before
    files_after, unreferenced = live_and_unreferenced(catalog)
    assert len(files_after) == len(TENANTS) and unreferenced == set()
    assert report.snapshots_left == 1 and report.files_removed > 100


@pytest.mark.slow  # a CDK synthesis (Node) for the stack's S3 Tables profile
def test_a_table_that_s3_tables_maintains_is_given_the_documented_retention(monkeypatch, tmp_path):
    """S3 Tables does the work; the job sets its table's maintenance configuration to the
    retention the other catalogs get, over S3 Tables' wire format (a loopback double: moto's
    s3tables has no maintenance operations)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    puts: list[tuple[str, dict]] = []

    class S3Tables(BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            puts.append((self.path, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), S3Tables)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3TABLES", f"http://127.0.0.1:{server.server_port}")
    warehouse = "arn:aws:s3tables:eu-west-1:123456789012:bucket/carousel-analytics"
    catalog = IcebergCatalog(
        properties={
            "type": "rest",
            "uri": "http://127.0.0.1:9/iceberg",  # never asked: S3 Tables does the work
            "warehouse": warehouse,
            "rest.signing-name": "s3tables",
            "rest.signing-region": "eu-west-1",
        }
    )
    try:
        with recorded_aws_calls() as actions:
            report = catalog.maintain(Retention())
    finally:
        server.shutdown()
    # What the weekly care calls, the stack's S3 Tables deployment allows its runs.
    from deploy.smartgo_deploy.stack import Settings
    from deploy.smartgo_deploy.synth import synth

    assert actions == {"s3tables:PutTableMaintenanceConfiguration"}
    assert not_allowed(actions, synth(Settings(), tmp_path), "RunTaskRole") == set()
    assert report.skipped == (
        "S3 Tables maintains this table itself, set to: snapshots older than 168 h expire, "
        "the last 10 kept; files compacted to 128 MB"
    )
    table = f"/tables/{quote(warehouse, safe='')}/pricing_intelligence/smartgo_sales/maintenance"
    assert sorted(puts, key=lambda put: put[0]) == [
        (
            f"{table}/icebergCompaction",
            {
                "value": {
                    "status": "enabled",
                    "settings": {"icebergCompaction": {"targetFileSizeMB": 128}},
                }
            },
        ),
        (
            f"{table}/icebergSnapshotManagement",
            {
                "value": {
                    "status": "enabled",
                    "settings": {
                        "icebergSnapshotManagement": {
                            "minSnapshotsToKeep": 10,
                            "maxSnapshotAgeHours": 168,
                        }
                    },
                }
            },
        ),
    ]


@pytest.mark.parametrize("size", [32 * 2**20, 1024 * 2**20])
def test_a_target_file_size_s3_tables_cannot_take_is_refused_by_the_settings_name(size):
    from smartgo_analytics.core.table_care import set_s3_tables_maintenance

    warehouse = "arn:aws:s3tables:eu-west-1:123456789012:bucket/carousel-analytics"
    with pytest.raises(
        ValueError,
        match=r"--target-file-size\) is \d+ MB: S3 Tables' compaction takes 64 to 512 MB",
    ):
        set_s3_tables_maintenance(
            {"warehouse": warehouse, "rest.signing-region": "eu-west-1"},
            "pricing_intelligence.smartgo_sales",
            Retention(target_file_size=size),
        )


def test_the_weekly_job_runs_the_maintenance_and_reports_it(tmp_path):
    from smartgo_analytics.definitions import defs
    from smartgo_analytics.maintenance import iceberg_maintenance_job

    schedule = defs.resolve_schedule_def("iceberg_maintenance_schedule")
    assert schedule.cron_schedule == "0 5 * * 0" and schedule.execution_timezone == "UTC"
    assert schedule.default_status.value == "RUNNING"
    catalog = IcebergCatalog(
        properties={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": (tmp_path / "warehouse").as_uri(),
        }
    )
    fill(catalog, days=4)
    config = {
        "expire_older_than": "0s",
        "keep_last": 1,
        "orphan_grace": "0s",
        "target_file_size": "1MB",
    }

    result = iceberg_maintenance_job.execute_in_process(
        resources={"iceberg": catalog},
        run_config={"ops": {"maintain_sales_table": {"config": config}}},
    )

    output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    assert metadata["partitions_compacted"] == len(TENANTS) and metadata["snapshots_left"] == 1
    # Four days and the re-written one: five files a partition, then one.
    assert metadata["files_before_compaction"] == 5 * len(TENANTS)
    assert metadata["files_after_compaction"] == len(TENANTS)
