"""The Iceberg catalog: SQL (SQLite or Postgres), REST (S3 Tables, with sigv4) or Glue."""

from __future__ import annotations

import os
import tempfile
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
from pyiceberg.exceptions import (
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
    Reference,
)
from pyiceberg.expressions.literals import literal
from pyiceberg.table import Table
from pyiceberg.table.sorting import NullOrder
from pyiceberg.transforms import IdentityTransform

from smartgo_analytics.core import sales_table
from smartgo_analytics.core.table_care import (
    MaintenanceReport,
    Retention,
    maintain_table,
    maintained_by_catalog,
    set_s3_tables_maintenance,
)


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
        GreaterThanOrEqual(term=Reference("sold_date"), value=literal(start.isoformat())),
        LessThan(term=Reference("sold_date"), value=literal(end.isoformat())),
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
                raise ValueError("the catalog's properties name no `type` (sql, rest or glue)")
            self._catalog = load_catalog(self.catalog_name, **self.properties)
        return self._catalog

    def table(self, identifier: str, schema, **creation) -> Table:
        """The table, created with `schema` and pyiceberg's `creation` options if it is missing.
        Loaded first: nothing is written for a table that exists (creating "if not exists" writes
        a metadata file before it learns that it does)."""
        catalog = self.catalog()
        try:
            return catalog.load_table(identifier)
        except NoSuchTableError:
            # Asked before it is made: in production the namespace (the Glue database, the S3
            # Tables namespace) is the stack's (deploy/), and the roles may read it, not create it.
            namespace = identifier.rsplit(".", 1)[0]
            if not catalog.namespace_exists(namespace):
                catalog.create_namespace_if_not_exists(namespace)
            try:
                table = catalog.create_table(identifier, schema=schema, **creation)
            except TableAlreadyExistsError:  # another run created it in the meantime
                return catalog.load_table(identifier)
            if maintained_by_catalog(self.properties):  # the documented retention, not AWS's
                set_s3_tables_maintenance(self.properties, identifier, Retention())
            return table

    def sales_table(self) -> Table:
        """`pricing_intelligence.smartgo_sales`, with its schema, partition spec and sort order."""
        table = self.table(
            sales_table.IDENTIFIER,
            sales_table.SCHEMA,
            partition_spec=sales_table.PARTITION_SPEC,
            sort_order=sales_table.SORT_ORDER,
            properties=sales_table.TABLE_PROPERTIES,
        )
        # A table created by an earlier version gets the properties and sort order it lacks.
        changed = {
            key: value
            for key, value in sales_table.TABLE_PROPERTIES.items()
            if table.properties.get(key) != value
        }
        unsorted = [f.source_id for f in table.sort_order().fields] != [
            f.source_id for f in sales_table.SORT_ORDER.fields
        ]
        if changed or unsorted:
            with table.transaction() as transaction:
                if changed:
                    transaction.set_properties(changed)
                if unsorted:
                    with transaction.update_sort_order() as order:
                        for name, _ in sales_table.ROW_ORDER:
                            order.asc(name, IdentityTransform(), NullOrder.NULLS_LAST)
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
        self,
        start: datetime,
        end: datetime,
        columns: tuple[str, ...],
        batch_rows: int = 4_000,
        tenant: str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The day's rows, `batch_rows` at a time, read straight from its data files: pyiceberg's
        own batch reader holds a whole file in memory, several files at once, and a day's vectors
        are hundreds of megabytes. Rows removed by delete files are not left out (this project's
        writes make none: a day is replaced by rewriting its files), so this is for what such a row
        cannot spoil, like an image's vector. Only one tenant's files, when `tenant` is given."""
        table = self.existing_sales_table()
        if table is None:
            return
        row_filter = day_filter(start, end)
        if tenant is not None:
            row_filter = And(
                row_filter, EqualTo(term=Reference("tenant_id"), value=literal(tenant))
            )
        scan = table.scan(row_filter=row_filter, selected_fields=columns)
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

    def maintain(self, retention: Retention, now: datetime | None = None, on_group_read=None):
        """Maintain the sales table (see `maintain_table`); a catalog that maintains its tables
        itself (S3 Tables) is left alone, and so is a table not created yet."""
        if maintained_by_catalog(self.properties):
            said = set_s3_tables_maintenance(self.properties, sales_table.IDENTIFIER, retention)
            return MaintenanceReport(skipped=said or "the table does not exist yet")
        table = self.existing_sales_table()
        if table is None:
            return MaintenanceReport(skipped="the table does not exist yet")
        return maintain_table(table, retention, now, on_group_read)

    def replace_day(self, batches: Iterable[pa.Table], start: datetime, end: datetime) -> Table:
        """The sales table with the day's rows replaced by the batches (see `replace`)."""
        return replace(self.sales_table(), day_filter(start, end), batches)


def replace(table: Table, where: BooleanExpression, batches: Iterable[pa.Table]) -> Table:
    """Delete the rows `where` holds and append the batches, all in one atomic commit (pyiceberg's
    public transaction API: a delete and one append per batch, committed together)."""
    with warnings.catch_warnings():
        # A day's first write deletes nothing; pyiceberg warns about that, it is expected here.
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        with table.transaction() as transaction:
            transaction.delete(where)
            for rows in batches:
                if rows.num_rows:
                    transaction.append(rows)
    return table.refresh()
