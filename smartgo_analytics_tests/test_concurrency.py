"""Many writers at once: conditional writes in both object stores, the index's manifests, the
QuickSight month files, and runs of one Dagster instance started at the same moment."""

import threading
from datetime import UTC, date, datetime, timedelta

import boto3
import numpy as np
import pyarrow as pa
import pytest

from smartgo_analytics.resources.object_store import LocalObjectStore, S3ObjectStore
from smartgo_analytics.similarity.reader import load_manifest
from smartgo_analytics.similarity.segments import DaySpool, new_segment_name, segment_keys
from smartgo_analytics.similarity.store import commit_day, delete_orphans


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalObjectStore(lake_dir=str(tmp_path / "lake"), bucket="b")
    stack = request.getfixturevalue("stack")
    bucket = f"concurrency-{request.node.name[-40:].lower().replace('_', '-').strip('[]-')}"
    bucket = "".join(c if c.isalnum() or c == "-" else "-" for c in bucket)[:60]
    boto3.client("s3", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return S3ObjectStore(
        bucket=bucket, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )


def test_a_conditional_write_lands_only_on_the_version_it_was_read_at(store):
    assert store.put_if_version("m/manifest.json", b"one", None)
    assert not store.put_if_version("m/manifest.json", b"again", None)  # it exists now
    data, first = store.get_versioned("m/manifest.json")
    assert data == b"one"
    assert store.put_if_version("m/manifest.json", b"two", first)
    assert not store.put_if_version("m/manifest.json", b"stale", first)
    data, second = store.get_versioned("m/manifest.json")
    assert data == b"two" and second != first
    assert store.versions("m/") == {"m/manifest.json": second}
    store.delete("m/manifest.json")
    assert not store.put_if_version("m/manifest.json", b"gone", second)
    with pytest.raises(FileNotFoundError):
        store.get_versioned("m/manifest.json")


def test_conditional_writes_from_many_threads_at_once_lose_no_increment(store):
    store.put_bytes("c/count", b"0")
    start = threading.Barrier(6)

    def add(times):
        start.wait()
        for _ in range(times):
            while True:
                data, version = store.get_versioned("c/count")
                if store.put_if_version("c/count", str(int(data) + 1).encode(), version):
                    break

    threads = [threading.Thread(target=add, args=(5,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get_bytes("c/count") == b"30"


def spool(directory, day: date, count: int, tag: str, rng) -> DaySpool:
    directory.mkdir(exist_ok=True)
    spool = DaySpool(directory, "t", 16)
    when = datetime.combine(day, datetime.min.time(), UTC)
    items = pa.record_batch(
        {
            "product_id": [f"{tag}-{n}" for n in range(count)],
            "category": ["c"] * count,
            "brand": [None] * count,
            "condition": [None] * count,
            "sold_price": [1.0] * count,
            "sold_date": pa.array([when] * count, pa.timestamp("us", "UTC")),
            "image_sha256": [None] * count,
        }
    )
    spool.add(items, rng.standard_normal((count, 16)).astype(np.float32))
    return spool


def test_index_updates_of_one_tenant_at_once_all_land_and_leave_no_file_unnamed(store, tmp_path):
    """Five updates of one tenant at the same moment, two of them the same day, with no pool to
    keep them apart: every day once, with the last count of a day written twice, and every
    segment file named by the manifest."""
    rng = np.random.default_rng(3)
    days = [date(2025, 3, d) for d in (1, 2, 3, 4, 2)]
    counts = [6, 7, 8, 9, 7]
    spools = [
        spool(tmp_path / str(n), day, count, f"{day}", rng)
        for n, (day, count) in enumerate(zip(days, counts, strict=True))
    ]
    start = threading.Barrier(len(days))
    errors = []

    def update(n):
        work = tmp_path / f"work-{n}"
        work.mkdir()
        start.wait()
        try:
            commit_day(store, "t", 16, days[n], spools[n], work, "m")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=update, args=(n,)) for n in range(len(days))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    manifest = load_manifest(store, "t", 16, "m")
    assert manifest.days() == {"2025-03-01": 6, "2025-03-02": 7, "2025-03-03": 8, "2025-03-04": 9}
    named = {key for s in manifest.segments for key in segment_keys(manifest, s.name)}
    assert set(store.list_keys("similarity_index/m.16d/t/segment-")) == named


def test_a_crashed_runs_segment_files_are_deleted_once_they_are_an_hour_old(store, tmp_path):
    rng = np.random.default_rng(4)
    work = tmp_path / "work"
    work.mkdir()
    manifest = commit_day(
        store, "t", 16, date(2025, 3, 1), spool(tmp_path, date(2025, 3, 1), 5, "a", rng), work, "m"
    )
    crashed = new_segment_name(date(2025, 3, 2))
    for key in segment_keys(manifest, crashed):
        store.put_bytes(key, b"half written")
    store.put_bytes(
        "similarity_index/m.16d/t/segment-2025-03-02-0123456789ab.f16", b"an older layout's"
    )
    assert delete_orphans(store, manifest) == [
        "similarity_index/m.16d/t/segment-2025-03-02-0123456789ab.f16"
    ]
    later = datetime.now(UTC) + timedelta(hours=2)
    assert sorted(delete_orphans(store, manifest, now=later)) == sorted(
        segment_keys(manifest, crashed)
    )
    named = {key for s in manifest.segments for key in segment_keys(manifest, s.name)}
    assert set(store.list_keys("similarity_index/m.16d/t/segment-")) == named


class Interleaved:
    """An object store that runs `meanwhile` once, the first time a file under `prefix` is read:
    another run's writes landing between this run's listing and its writes."""

    def __init__(self, store, prefix, meanwhile):
        self.store, self.prefix, self.meanwhile = store, prefix, meanwhile

    def get_bytes(self, key):
        if self.meanwhile and key.startswith(self.prefix):
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return self.store.get_bytes(key)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_month_file_and_manifest_keep_every_day_when_another_run_exports_between_list_and_write(
    store,
):
    """Run A exports 2025-01-02 and lists the month's days; before it writes the month file, run B
    exports 2025-01-03 and 2025-02-01 and writes the month file and the manifest. A's month file and
    manifest, written last, still hold B's days."""
    from smartgo_analytics.layout import quicksight_export_key, quicksight_month_key
    from smartgo_analytics.steps.quicksight import write_manifest

    prefix, dataset = "quicksight/", "anomalies"

    def export(days):
        for day in days:
            store.put_bytes(
                quicksight_export_key(prefix, dataset, day), f'{{"date": "{day}"}}\n'.encode()
            )

    def run_b():
        export(["2025-01-03", "2025-02-01"])
        write_manifest(store, prefix, dataset, ["2025-01-03", "2025-02-01"])

    export(["2025-01-01", "2025-01-02"])
    interleaved = Interleaved(store, f"{prefix}{dataset}/", run_b)
    _, files = write_manifest(interleaved, prefix, dataset, ["2025-01-02"])
    month = store.get_bytes(quicksight_month_key(prefix, dataset, "2025-01")).decode()
    assert month.splitlines() == [f'{{"date": "2025-01-0{d}"}}' for d in (1, 2, 3)]
    body = store.get_bytes(f"{prefix}manifests/{dataset}.json").decode()
    assert (
        files == 2
        and "months/anomalies/2025-01.json" in body
        and "months/anomalies/2025-02.json" in body
    )


# Runs truly at once: `dagster asset materialize` processes started together against one instance
# (SQLite, with the project's pools), on the session's local stack.
PRICING = (
    "smartgo_sales,product_image_embeddings,smartgo_sales_iceberg,price_bands,"
    "similarity_index,embedding_quality"
)
QUICKSIGHT = "dynamodb_daily_metrics," + ",".join(
    f"quicksight/{d}"
    for d in ("store_summaries", "top_products", "anomalies", "trends", "recommendations")
)
DAYS = ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-04"]
BROKEN = "2024-07-05"  # a fifth of its images gone: over the error budget, its run fails
PRICING_CHECKS = [
    ("smartgo_sales", "no_quarantined_rows"),
    ("product_image_embeddings", "embedding_error_ratio_within_budget"),
    ("product_image_embeddings", "vectors_have_configured_length"),
    ("smartgo_sales_iceberg", "iceberg_rows_match_source"),
    ("price_bands", "bands_hold_together"),
    ("similarity_index", "index_matches_table"),
    ("embedding_quality", "embeddings_look_right"),
]


@pytest.fixture
def instance_home(tmp_path):
    import yaml
    from dagster import DagsterInstance

    from smartgo_analytics.cli.stack import PROJECT_DAGSTER_YAML
    from smartgo_analytics.pools import set_pool_limits

    home = tmp_path / "dagster"
    home.mkdir()
    # The project's instance, without run retries: no daemon here would launch them.
    config = yaml.safe_load(PROJECT_DAGSTER_YAML.read_text())
    config["run_retries"] = {"enabled": False}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with DagsterInstance.from_config(str(home)) as instance:
        set_pool_limits(instance)
    return home


def start_together(stack, instance_home, runs: list[tuple[str, str]]) -> list[int]:
    """Each (selection, partition or range) as its own process, all started at once; exit codes."""
    import os
    import subprocess
    import sys

    from smartgo_analytics.local.stack import stack_environment

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTGO_", "DAGSTER_HOME"))}
    env.update(stack_environment(stack), DAGSTER_HOME=str(instance_home))
    processes = []
    for n, (selection, partition) in enumerate(runs):
        which = (
            ["--partition-range", partition] if "..." in partition else ["--partition", partition]
        )
        log = (instance_home / f"run-{n}.log").open("w")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dagster",
                    "asset",
                    "materialize",
                    "-m",
                    "smartgo_analytics.definitions",
                    "--select",
                    selection,
                    *which,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=instance_home,
            )
        )
    return [process.wait(timeout=600) for process in processes]


def test_runs_started_at_once_leave_what_one_at_a_time_leaves_and_alert_each_failure_once(
    stack, instance_home
):
    import psycopg
    from dagster import (
        AssetCheckKey,
        AssetKey,
        DagsterInstance,
        build_sensor_context,
        evaluate_automation_conditions,
    )

    from smartgo_analytics.core import price_bands as bands_core
    from smartgo_analytics.definitions import defs
    from smartgo_analytics.layout import quicksight_export_key, quicksight_month_key
    from smartgo_analytics.local import demo_data
    from smartgo_analytics.resources.alerts import Alerter
    from smartgo_analytics.resources.iceberg import IcebergCatalog
    from smartgo_analytics.sensors import failed_check_alert, failed_partition_alert
    from smartgo_analytics.steps.price_bands import bands_of_day
    from smartgo_analytics_tests.servers import WebhookReceiver

    demo_data.seed(stack, [date.fromisoformat(d) for d in [*DAYS, BROKEN]], 60)
    with psycopg.connect(stack.postgres_uri) as conn:
        conn.execute(
            "UPDATE smartgo.products SET image_url = image_url || '.gone' "
            "WHERE id LIKE 'SG-20240705-%%' AND id < 'SG-20240705-00015'"
        )

    receiver = WebhookReceiver()
    alerter = Alerter(destinations=["slack"], slack_webhook_url=receiver.url)

    def tick(sensor, cursor):
        with DagsterInstance.from_config(str(instance_home)) as instance:
            context = build_sensor_context(
                instance=instance, definitions=defs, resources={"alerter": alerter}, cursor=cursor
            )
            return sensor.evaluate_tick(context).cursor

    cursors = {
        sensor: tick(sensor, None) for sensor in (failed_partition_alert, failed_check_alert)
    }

    def refresh_stale_bands(cursor):
        """What `stale_days_refresh` does on a tick: the price-band days to make again, made."""
        with DagsterInstance.from_config(str(instance_home)) as instance:
            result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        stale = sorted(
            key
            for r in result.results
            if r.key == AssetKey("price_bands")
            for key in r.true_subset.expensively_compute_partition_keys()
        )
        assert start_together(stack, instance_home, [("price_bands", d) for d in stale]) == [
            0
        ] * len(stale)
        return result.cursor, stale

    automation, _ = refresh_stale_bands(None)
    # Three days of the index and one of them twice, the broken day, two overlapping QuickSight
    # ranges and a QuickSight day inside them; then an earlier day, out of order.
    codes = start_together(
        stack,
        instance_home,
        [
            (PRICING, DAYS[1]),
            (PRICING, DAYS[2]),
            (PRICING, DAYS[3]),
            (PRICING, DAYS[2]),
            (PRICING, BROKEN),
            (QUICKSIGHT, f"{DAYS[0]}...{DAYS[2]}"),
            (QUICKSIGHT, f"{DAYS[1]}...{DAYS[3]}"),
            (QUICKSIGHT, DAYS[3]),
        ],
    )
    assert codes[:4] == [0, 0, 0, 0] and codes[4] != 0 and codes[5:] == [0, 0, 0], codes
    automation, _ = refresh_stale_bands(automation)  # days whose window another run changed
    assert start_together(stack, instance_home, [(PRICING, DAYS[0])]) == [0]
    # The later days' bands were made before the first day's sales: they are made again, once.
    automation, stale = refresh_stale_bands(automation)
    assert stale == DAYS[1:]
    automation, stale = refresh_stale_bands(automation)
    assert stale == []

    with DagsterInstance.from_config(str(instance_home)) as instance:
        # Every check result is its day's, none left planned; no ERROR check failed on a good day.
        for asset, name in PRICING_CHECKS:
            records = instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(AssetKey(asset), name), limit=100
            )
            assert records and all(r.partition for r in records), (asset, name)
            # (The broken day's later steps did not run: Dagster shows their checks as skipped.)
            assert not [
                r for r in records if r.partition in DAYS and r.status.value == "PLANNED"
            ], name
            evaluations = [
                r.event.dagster_event.event_specific_data
                for r in records
                if r.event and r.status.value != "PLANNED"
            ]
            if name not in ("no_quarantined_rows", "embeddings_look_right"):
                good = [e for e in evaluations if e.partition in DAYS]
                assert good and all(e.passed for e in good), (name, [e.description for e in good])

    # One alert for the broken day's run, none for the others, however often the sensors tick.
    for _ in range(6):
        cursors = {sensor: tick(sensor, cursor) for sensor, cursor in cursors.items()}
    receiver.server.shutdown()
    partitions = [
        line
        for text in receiver.texts()
        for line in text.splitlines()
        if line.startswith("partition:")
    ]
    assert partitions == [f"partition: {BROKEN}"], receiver.texts()

    # The index holds each tenant-day's rows with a vector, once, and names every file it keeps.
    iceberg = IcebergCatalog(properties=stack.iceberg_properties)
    store = LocalObjectStore(lake_dir=stack.lake_dir, bucket=stack.bucket)
    start = datetime(2024, 7, 1, tzinfo=UTC)
    rows = iceberg.read_day(
        start, start + timedelta(days=4), ("tenant_id", "sold_date", "embedding_vector")
    )
    table = {}
    for row in rows.to_pylist():
        if row["embedding_vector"] is not None:
            key = (row["tenant_id"], row["sold_date"].date().isoformat())
            table[key] = table.get(key, 0) + 1
    indexed = {}
    for tenant in {t for t, _ in table}:
        manifest = load_manifest(store, tenant, 1024, "local-visual-features-v1/1024")
        indexed |= {(tenant, d): n for d, n in manifest.days().items() if d in DAYS}
        named = {key for s in manifest.segments for key in segment_keys(manifest, s.name)}
        assert set(store.list_keys(f"similarity_index/{manifest.space}/{tenant}/segment-")) == named
    assert indexed == table and len(table) >= 8

    # Each day's bands are those the table gives now.
    bands_table = iceberg.table(bands_core.IDENTIFIER, bands_core.SCHEMA)
    for day in DAYS:
        fresh, _ = bands_of_day(iceberg, date.fromisoformat(day))
        stored = bands_table.scan(row_filter=f"band_date = '{day}'").to_arrow()
        assert band_rows(stored) == band_rows(fresh), day

    # Each QuickSight month file holds its four days in order, whichever run wrote it last.
    for dataset in ("store_summaries", "top_products", "anomalies", "trends", "recommendations"):
        days = b"".join(
            store.get_bytes(quicksight_export_key("quicksight/", dataset, d))
            for d in DAYS
            if store.list_keys(quicksight_export_key("quicksight/", dataset, d))
        )
        assert store.get_bytes(quicksight_month_key("quicksight/", dataset, "2024-07")) == days, (
            dataset
        )


def band_rows(table) -> list[tuple]:
    columns = ["level", "tenant_id", "category", "brand", "condition", "sales_count", "median"]
    return sorted(tuple(row[c] for c in columns) for row in table.select(columns).to_pylist())


def test_the_local_lake_gives_each_write_of_a_file_a_version_of_its_own(tmp_path):
    """A file replaced many times in a row by others of the same size: the file system uses the
    freed inodes again at once and its clock moves by ticks, yet no two writes share a version (a
    write conditional on an old one is refused)."""
    from smartgo_analytics.lake_directory import LakeDirectory

    lake = LakeDirectory(tmp_path)
    versions = []
    for n in range(100):
        lake.put_bytes("m.json", b'{"day": %03d}' % n)
        versions.append(lake.get_versioned("m.json")[1])
    assert len(set(versions)) == len(versions)
    assert not lake.put_if_version("m.json", b'{"day": 999}', versions[0])
    # Each write is stamped later than the file it replaces, whatever the clock says: a version
    # never comes back, even from a file of the same size in an inode used again.
    import os
    import time

    later = time.time_ns() + 3600 * 10**9
    os.utime(lake.path("m.json"), ns=(later, later))
    lake.put_bytes("m.json", b'{"day": 998}')
    assert lake.path("m.json").stat().st_mtime_ns > later
