"""The day's Iceberg write: partition files, one commit, and the table's write properties."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smartgo_analytics.core import sales_table
from smartgo_analytics.layout import NAMESPACE
from smartgo_analytics.resources.iceberg import IcebergCatalog

DAY = datetime(2025, 3, 31, tzinfo=UTC)
TENANTS = ("carousel-labs", "northwind-resale", "tokyo-vintage")


@pytest.fixture
def catalog(tmp_path):
    return IcebergCatalog(
        properties={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": (tmp_path / "warehouse").as_uri(),
        }
    )


def rows(count: int, first: int = 0, price: float = 10.0) -> pa.Table:
    """Iceberg rows with the tenants interleaved, as a batch not clustered by partition would be."""
    vectors = np.random.default_rng(first).standard_normal((count, 4), dtype=np.float32)
    ids = [f"P-{first + n:04d}" for n in range(count)]
    table = pa.table(
        {
            "product_id": ids,
            "tenant_id": [TENANTS[n % 3] for n in range(count)],
            "category": ["Electronics"] * count,
            "brand": ["Sony"] * count,
            "condition": ["Good"] * count,
            "sold_price": [price + n for n in range(count)],
            "sold_date": [DAY + timedelta(minutes=7 * n) for n in range(count)],
            "season": ["spring"] * count,
            "quarter": ["Q1"] * count,
            "year": [2025] * count,
            "month": [3] * count,
            "image_s3_key": [None] * count,
            "image_sha256": [None] * count,
            "embedding_id": [f"smartgo-{p}-1" for p in ids],
            "embedding_model": ["amazon.titan-embed-image-v1"] * count,
            "embedding_dimension": [4] * count,
            "embedding_vector": [list(v) for v in vectors],
            "embedding_error": [None] * count,
            "source_system": ["smartgo"] * count,
            "ingestion_timestamp": [DAY] * count,
        }
    )
    return table.cast(sales_table.ARROW_SCHEMA)


def read(catalog) -> dict:
    table = catalog.read_day(DAY, DAY + timedelta(days=1))
    return {row["product_id"]: row for row in table.to_pylist()}


def test_each_partition_file_holds_only_its_tenants_rows_clustered_or_not(catalog):
    interleaved = rows(30)
    clustered = rows(12, first=100).sort_by(sales_table.ROW_ORDER)
    table = catalog.replace_day(
        [interleaved, interleaved.schema.empty_table(), clustered], DAY, DAY + timedelta(days=1)
    )

    files = table.inspect.files().to_pylist()
    assert sorted((f["partition"]["tenant_id"], f["record_count"]) for f in files) == sorted(
        [(t, 10) for t in TENANTS] + [(t, 4) for t in TENANTS]
    )
    for data_file in files:
        tenants = set(
            pq.read_table(data_file["file_path"].removeprefix("file://"), columns=["tenant_id"])
            .column(0)
            .to_pylist()
        )
        assert tenants == {data_file["partition"]["tenant_id"]}
        assert (data_file["partition"]["year"], data_file["partition"]["month"]) == (2025, 3)

    written = read(catalog)
    expected = {r["product_id"]: r for r in interleaved.to_pylist() + clustered.to_pylist()}
    assert written.keys() == expected.keys()
    for product_id, row in expected.items():
        assert written[product_id]["tenant_id"] == row["tenant_id"]
        assert written[product_id]["sold_price"] == row["sold_price"]
        assert written[product_id]["embedding_vector"] == row["embedding_vector"]


def test_replacing_a_day_is_one_commit_and_leaves_other_days_alone(catalog):
    catalog.replace_day([rows(6)], DAY, DAY + timedelta(days=1))
    next_day = rows(3, first=50).set_column(
        6,
        sales_table.ARROW_SCHEMA.field("sold_date"),
        pa.array(
            [DAY + timedelta(days=1, hours=n) for n in range(3)], pa.timestamp("us", tz="UTC")
        ),
    )
    catalog.replace_day([next_day], DAY + timedelta(days=1), DAY + timedelta(days=2))
    before = catalog.sales_table().metadata
    commits = len(before.metadata_log)

    table = catalog.replace_day(
        [rows(4, price=99.0), rows(2, first=4, price=99.0)], DAY, DAY + timedelta(days=1)
    )

    assert {r["sold_price"] >= 99.0 for r in read(catalog).values()} == {True}
    assert len(read(catalog)) == 6
    assert catalog.read_day(DAY + timedelta(days=1), DAY + timedelta(days=2)).num_rows == 3
    # A delete and an append per batch, committed together: one new metadata file.
    operations = [
        s.summary.operation.value
        for s in table.snapshots()
        if s.sequence_number > before.last_sequence_number
    ]
    assert operations == ["delete", "append", "append"]
    assert len(table.metadata.metadata_log) == commits + 1


def test_a_table_created_without_the_write_properties_gets_them(catalog):
    old = {"write.parquet.compression-codec": "zstd"}
    iceberg = catalog.catalog()
    iceberg.create_namespace_if_not_exists(NAMESPACE)
    iceberg.create_table(
        sales_table.IDENTIFIER,
        schema=sales_table.SCHEMA,
        partition_spec=sales_table.PARTITION_SPEC,
        properties=old,
    )

    table = catalog.sales_table()

    for key, value in sales_table.TABLE_PROPERTIES.items():
        assert table.properties[key] == value
        assert iceberg.load_table(sales_table.IDENTIFIER).properties[key] == value


def test_a_days_files_are_read_a_few_rows_at_a_time_and_only_that_days_rows(catalog):
    day = rows(40)
    # One file per tenant holding this day and the next: the day's rows are picked out of it.
    next_day = rows(20, first=300).set_column(
        6,
        sales_table.ARROW_SCHEMA.field("sold_date"),
        pa.array(
            [DAY + timedelta(days=1, hours=n) for n in range(20)], pa.timestamp("us", tz="UTC")
        ),
    )
    catalog.replace_day([pa.concat_tables([day, next_day])], DAY, DAY + timedelta(days=2))

    columns = ("product_id", "embedding_vector")
    batches = list(catalog.scan_day_files(DAY, DAY + timedelta(days=1), columns, batch_rows=4))

    assert max(batch.num_rows for batch in batches) <= 4
    assert all(batch.schema.names == list(columns) for batch in batches)
    read_back = {r["product_id"]: r["embedding_vector"] for b in batches for r in b.to_pylist()}
    assert read_back == {r["product_id"]: r["embedding_vector"] for r in day.to_pylist()}
    assert list(catalog.scan_day_files(DAY - timedelta(days=1), DAY, columns)) == []
    dated = catalog.scan_day_files(DAY, DAY + timedelta(days=1), ("sold_date", "product_id"))
    assert sum(batch.num_rows for batch in dated) == 40


def test_loading_the_table_writes_nothing_and_it_declares_the_order_rows_are_written_in(catalog):
    table = catalog.replace_day([rows(9)], DAY, DAY + timedelta(days=1))
    metadata_dir = table.location().removeprefix("file://") + "/metadata"
    import os

    before = sorted(os.listdir(metadata_dir))
    for _ in range(3):  # as every materialisation does, also one that writes nothing
        catalog.sales_table()
    assert sorted(os.listdir(metadata_dir)) == before
    declared = [
        (table.schema().find_column_name(f.source_id), f.direction.value)
        for f in table.sort_order().fields
    ]
    assert declared == [(name, "asc") for name, _ in sales_table.ROW_ORDER]
