"""Many writers at once: conditional writes in both object stores, the index's manifests, the
QuickSight month files, and runs of one Dagster instance started at the same moment."""

import threading
from datetime import UTC, date, datetime, timedelta

import boto3
import numpy as np
import pyarrow as pa
import pytest

from smartgo_analytics.assets.similarity import commit_day, delete_orphans, load_manifest
from smartgo_analytics.core import similarity as sim
from smartgo_analytics.resources.object_store import LocalObjectStore, S3ObjectStore


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


def spool(directory, day: date, count: int, tag: str, rng) -> sim.DaySpool:
    directory.mkdir(exist_ok=True)
    spool = sim.DaySpool(directory, "t", 16)
    when = datetime.combine(day, datetime.min.time(), UTC)
    items = pa.record_batch({
        "product_id": [f"{tag}-{n}" for n in range(count)], "category": ["c"] * count,
        "brand": [None] * count, "condition": [None] * count, "sold_price": [1.0] * count,
        "sold_date": pa.array([when] * count, pa.timestamp("us", "UTC")),
        "image_sha256": [None] * count,
    })  # fmt: skip
    spool.add(items, rng.standard_normal((count, 16)).astype(np.float32))
    return spool


def test_index_updates_of_one_tenant_at_once_all_land_and_leave_no_file_unnamed(store, tmp_path):
    """Five updates of one tenant at the same moment, two of them the same day, with no pool to
    keep them apart: every day once, with the last count of a day written twice, and every
    segment file named by the manifest."""
    rng = np.random.default_rng(3)
    days = [date(2025, 3, d) for d in (1, 2, 3, 4, 2)]
    counts = [6, 7, 8, 9, 7]
    spools = [spool(tmp_path / str(n), day, count, f"{day}", rng)
              for n, (day, count) in enumerate(zip(days, counts, strict=True))]  # fmt: skip
    start = threading.Barrier(len(days))
    errors = []

    def update(n):
        work = tmp_path / f"work-{n}"
        work.mkdir()
        start.wait()
        try:
            commit_day(store, "t", 16, days[n], spools[n], work)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=update, args=(n,)) for n in range(len(days))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    manifest = load_manifest(store, "t", 16)
    assert manifest.days() == {"2025-03-01": 6, "2025-03-02": 7, "2025-03-03": 8, "2025-03-04": 9}
    named = {key for s in manifest.segments for key in sim.segment_keys("t", s.name)}
    assert set(store.list_keys("similarity_index/t/segment-")) == named


def test_a_crashed_runs_segment_files_are_deleted_once_they_are_an_hour_old(store, tmp_path):
    rng = np.random.default_rng(4)
    work = tmp_path / "work"
    work.mkdir()
    manifest = commit_day(
        store, "t", 16, date(2025, 3, 1), spool(tmp_path, date(2025, 3, 1), 5, "a", rng), work
    )
    crashed = sim.new_segment_name(date(2025, 3, 2))
    for key in sim.segment_keys("t", crashed):
        store.put_bytes(key, b"half written")
    store.put_bytes("similarity_index/t/segment-2025-03-02-0123456789ab.f16", b"an older layout's")
    assert delete_orphans(store, manifest) == [
        "similarity_index/t/segment-2025-03-02-0123456789ab.f16"
    ]
    later = datetime.now(UTC) + timedelta(hours=2)
    assert sorted(delete_orphans(store, manifest, now=later)) == sorted(
        sim.segment_keys("t", crashed)
    )
    named = {key for s in manifest.segments for key in sim.segment_keys("t", s.name)}
    assert set(store.list_keys("similarity_index/t/segment-")) == named
