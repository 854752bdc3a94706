"""The Iceberg catalog: SQL (SQLite or Postgres), REST (S3 Tables, with sigv4) or Glue."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from datetime import datetime

import pyarrow as pa
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table

from smartgo_analytics.core import sales_table
from smartgo_analytics.local.stack import running_stack


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
    local_stack_home: str | None = None

    _catalog: Catalog | None = PrivateAttr(default=None)

    def catalog(self) -> Catalog:
        if self._catalog is None:
            properties = dict(self.properties)
            if self.local_stack_home is not None:
                info = running_stack(self.local_stack_home)
                properties = {
                    "type": "sql",
                    "uri": info.catalog_uri,
                    "warehouse": info.warehouse_uri,
                }
            if not properties.get("type"):
                raise ValueError("ICEBERG_CATALOG_TYPE is not set (sql, rest or glue)")
            self._catalog = load_catalog(self.catalog_name, **properties)
        return self._catalog

    def sales_table(self) -> Table:
        """`pricing_intelligence.smartgo_sales`, created with its schema and partition spec if missing."""
        catalog = self.catalog()
        catalog.create_namespace_if_not_exists(sales_table.NAMESPACE)
        return catalog.create_table_if_not_exists(
            sales_table.IDENTIFIER,
            schema=sales_table.SCHEMA,
            partition_spec=sales_table.PARTITION_SPEC,
            properties=sales_table.TABLE_PROPERTIES,
        )

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

    def replace_day(self, batches: Iterable[pa.Table], start: datetime, end: datetime) -> Table:
        """Delete the day's rows and append the batches, all in one atomic commit."""
        table = self.sales_table()
        with warnings.catch_warnings():
            # A day's first write deletes nothing; pyiceberg warns about that, it is expected here.
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            with table.transaction() as transaction:
                transaction.delete(day_filter(start, end))
                for rows in batches:
                    if rows.num_rows:
                        transaction.append(rows)
        return table.refresh()
