"""The Iceberg catalog: SQL (SQLite or Postgres), REST (S3 Tables, with sigv4) or Glue."""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Iterator
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThan
from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, pyarrow_to_schema, write_file
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
from pyiceberg.table import Table, WriteTask
from pyiceberg.table.metadata import TableMetadata

from smartgo_analytics.core import sales_table


class KnownVectors:
    """Vectors from the table, one per distinct image (sha256), of one model and length. A big
    day's are hundreds of megabytes: they wait in a temporary file rather than in memory, and are
    read back one at a time as results need them."""

    def __init__(self, batches: Iterable[pa.RecordBatch], model_id: str, dimension: int):
        self._width = dimension * np.dtype(np.float32).itemsize
        # Closed (and so deleted) by __exit__, or here if reading the table fails.
        self._file = tempfile.TemporaryFile(prefix="smartgo-known-vectors-")  # noqa: SIM115
        self._rows: dict[str, int] = {}
        try:
            for batch in batches:
                self._add(batch, model_id, dimension)
            self._file.flush()
        except BaseException:
            self._file.close()
            raise

    def _add(self, batch: pa.RecordBatch, model_id: str, dimension: int) -> None:
        vectors = batch.column("embedding_vector")
        usable = pc.and_(
            pc.equal(batch.column("embedding_model"), model_id),
            pc.equal(pc.list_value_length(vectors), dimension),
        ).to_pylist()
        keep = []
        for index, (sha, ok) in enumerate(
            zip(batch.column("image_sha256").to_pylist(), usable, strict=True)
        ):
            if ok and sha and sha not in self._rows:
                self._rows[sha] = len(self._rows)
                keep.append(index)
        if keep:
            flat = pc.list_flatten(vectors.take(keep)).to_numpy(zero_copy_only=False)
            self._file.write(flat.astype(np.float32, copy=False).tobytes())

    def __contains__(self, sha: object) -> bool:
        return sha in self._rows

    def __getitem__(self, sha: str) -> np.ndarray:
        data = os.pread(self._file.fileno(), self._width, self._rows[sha] * self._width)
        return np.frombuffer(data, dtype=np.float32)

    def __enter__(self) -> KnownVectors:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def day_filter(start: datetime, end: datetime) -> BooleanExpression:
    return And(
        GreaterThanOrEqual("sold_date", start.isoformat()), LessThan("sold_date", end.isoformat())
    )


class IcebergCatalog(ConfigurableResource):
    """pyiceberg catalog properties, as pyiceberg's `load_catalog` takes them.

    S3 Tables: `type=rest`, `uri=https://s3tables.<region>.amazonaws.com/iceberg`,
    `warehouse=<table bucket ARN>`, `rest.sigv4-enabled=true`, `rest.signing-name=s3tables`,
    `rest.signing-region=<region>`. Glue: `type=glue`. SQL: `type=sql`, `uri=<SQLAlchemy URL>`,
    `warehouse=<s3:// or file:// URI>`.
    """

    catalog_name: str = "smartgo"
    properties: dict[str, str] = Field(default_factory=dict)

    _catalog: Catalog | None = PrivateAttr(default=None)

    def catalog(self) -> Catalog:
        if self._catalog is None:
            if not self.properties.get("type"):
                raise ValueError("ICEBERG_CATALOG_TYPE is not set (sql, rest or glue)")
            self._catalog = load_catalog(self.catalog_name, **self.properties)
        return self._catalog

    def sales_table(self) -> Table:
        """`pricing_intelligence.smartgo_sales`, created with its schema and partition spec if missing."""
        catalog = self.catalog()
        catalog.create_namespace_if_not_exists(sales_table.NAMESPACE)
        table = catalog.create_table_if_not_exists(
            sales_table.IDENTIFIER,
            schema=sales_table.SCHEMA,
            partition_spec=sales_table.PARTITION_SPEC,
            properties=sales_table.TABLE_PROPERTIES,
        )
        # A table created by an earlier version gets the write properties it lacks.
        changed = {
            key: value
            for key, value in sales_table.TABLE_PROPERTIES.items()
            if table.properties.get(key) != value
        }
        if changed:
            with table.transaction() as transaction:
                transaction.set_properties(changed)
        return table

    def existing_sales_table(self) -> Table | None:
        catalog = self.catalog()
        if not catalog.table_exists(sales_table.IDENTIFIER):
            return None
        return catalog.load_table(sales_table.IDENTIFIER)

    def read_day(
        self, start: datetime, end: datetime, columns: tuple[str, ...] = ("*",)
    ) -> pa.Table | None:
        table = self.existing_sales_table()
        if table is None:
            return None
        return table.scan(row_filter=day_filter(start, end), selected_fields=columns).to_arrow()

    def scan_day_files(
        self, start: datetime, end: datetime, columns: tuple[str, ...], batch_rows: int = 4_000
    ) -> Iterator[pa.RecordBatch]:
        """The day's rows, `batch_rows` at a time, read straight from its data files: pyiceberg's
        own batch reader holds a whole file in memory, several files at once, and a day's vectors
        are hundreds of megabytes. Rows removed by delete files are not left out (this project's
        writes make none: a day is replaced by rewriting its files), so this is for what such a row
        cannot spoil, like an image's vector."""
        table = self.existing_sales_table()
        if table is None:
            return
        scan = table.scan(row_filter=day_filter(start, end), selected_fields=columns)
        window = (
            pa.scalar(start, pa.timestamp("us", "UTC")),
            pa.scalar(end, pa.timestamp("us", "UTC")),
        )
        for task in scan.plan_files():
            with table.io.new_input(task.file.file_path).open() as stream:
                # A buffered stream: a column's pages are read as the batches need them.
                parquet = pq.ParquetFile(stream, buffer_size=1 << 20)
                read = list(dict.fromkeys([*columns, "sold_date"]))
                for batch in parquet.iter_batches(batch_rows, columns=read):
                    sold = batch.column("sold_date")
                    in_day = pc.and_(pc.greater_equal(sold, window[0]), pc.less(sold, window[1]))
                    yield batch.filter(in_day).select(columns)

    def day_vectors(
        self, start: datetime, end: datetime, model_id: str, dimension: int
    ) -> KnownVectors:
        """The vectors the table holds for the day, by image, of this model and length."""
        columns = ("image_sha256", "embedding_model", "embedding_vector")
        return KnownVectors(self.scan_day_files(start, end, columns), model_id, dimension)

    def replace_day(self, batches: Iterable[pa.Table], start: datetime, end: datetime) -> Table:
        """Delete the day's rows and append the batches, all in one atomic commit.

        The batches go into one append snapshot. Each batch is split by partition with one `take`
        per partition (a slice when the batch is already clustered by partition, as the pipeline's
        rows are), and pyiceberg's own file writer writes the partitions in parallel.
        """
        table = self.sales_table()
        with warnings.catch_warnings():
            # A day's first write deletes nothing; pyiceberg warns about that, it is expected here.
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            with table.transaction() as transaction:
                transaction.delete(day_filter(start, end))
                with transaction.update_snapshot().fast_append() as append:
                    counter = itertools.count()
                    for rows in batches:
                        if not rows.num_rows:
                            continue
                        tasks = _write_tasks(
                            transaction.table_metadata, rows, append.commit_uuid, counter
                        )
                        for data_file in write_file(table.io, transaction.table_metadata, tasks):
                            append.append_data_file(data_file)
        return table.refresh()


def _write_tasks(
    metadata: TableMetadata, rows: pa.Table, write_uuid: uuid.UUID, counter: Iterator[int]
) -> Iterator[WriteTask]:
    """One write task per partition of the rows, each with its partition key."""
    schema, spec = metadata.schema(), metadata.spec()
    _check_pyarrow_schema_compatible(schema, rows.schema, format_version=metadata.format_version)
    task_schema = pyarrow_to_schema(
        rows.schema, name_mapping=schema.name_mapping, format_version=metadata.format_version
    )
    names = [f"_partition_{n}" for n in range(len(spec.fields))]
    keys = pa.table(
        {
            name: field.transform.pyarrow_transform(schema.find_field(field.source_id).field_type)(
                rows.column(schema.find_column_name(field.source_id))
            )
            for name, field in zip(names, spec.fields, strict=True)
        }
    ).append_column("_row", pa.array(range(rows.num_rows), pa.int64()))
    groups = keys.group_by(names, use_threads=False).aggregate([("_row", "list")])
    for group in groups.to_pylist():
        indices = group["_row_list"]
        first, last = indices[0], indices[-1]
        contiguous = last - first + 1 == len(indices) and indices == sorted(indices)
        partition = rows.slice(first, len(indices)) if contiguous else rows.take(indices)
        key = PartitionKey(
            field_values=[
                PartitionFieldValue(field=field, value=group[name])
                for field, name in zip(spec.fields, names, strict=True)
            ],
            partition_spec=spec,
            schema=schema,
        )
        yield WriteTask(
            write_uuid=write_uuid,
            task_id=next(counter),
            schema=task_schema,
            record_batches=partition.to_batches(),
            partition_key=key,
        )
