"""What the price-bands asset does between reading the table and reporting."""

from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa
from pyiceberg.expressions import EqualTo, Reference
from pyiceberg.expressions.literals import literal
from pyiceberg.table import Table

from smartgo_analytics.core import price_bands as bands_core
from smartgo_analytics.core.ndjson import encode_ndjson
from smartgo_analytics.layout import staged_records_key
from smartgo_analytics.metadata import iceberg_columns, md_table, snapshot_rows, table_metadata
from smartgo_analytics.resources.iceberg import IcebergCatalog, replace
from smartgo_analytics.resources.object_store import ObjectStore

BAND_ORDER = ("level", "tenant_id", "category", "brand", "condition")
PREVIEW = ["level", "tenant_id", "category", "brand", "condition", "sales_count", "median"]


def bands_of_day(iceberg: IcebergCatalog, day: date) -> tuple[pa.Table, int]:
    """The day's bands computed from the table as it is now, and the sales of their window.

    A batch at a time from the data files, the price columns only (not the vectors), aggregated as
    they come: a 90-day window is never held whole."""
    first, _ = bands_core.window(day)
    start = datetime.combine(first, time(), UTC)
    end = datetime.combine(day + timedelta(days=1), time(), UTC)
    sales = SalesBatches(iceberg.scan_day_files(start, end, bands_core.SALES_COLUMNS))
    reader = pa.RecordBatchReader.from_batches(bands_core.SALES_SCHEMA, iter(sales))
    bands = bands_core.price_bands(reader, day)
    return bands, sales.rows


class SalesBatches:
    """The sales' batches typed as the bands read them; `rows` says how many went through."""

    def __init__(self, batches: Iterable[pa.RecordBatch]):
        self.batches, self.rows = batches, 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self.batches:
            self.rows += batch.num_rows
            yield batch.cast(bands_core.SALES_SCHEMA)


def replace_bands(
    iceberg: IcebergCatalog, object_store: ObjectStore, day: date, bands: pa.Table
) -> Table:
    """The day's bands in place of those the table held for it, in one commit, and staged for the
    QuickSight dataset `price_bands`: the table."""
    table = iceberg.table(bands_core.IDENTIFIER, bands_core.SCHEMA)
    table = replace(
        table, EqualTo(term=Reference("band_date"), value=literal(day.isoformat())), [bands]
    )
    object_store.put_bytes(
        staged_records_key("price_bands", day.isoformat()),
        encode_ndjson(bands_core.quicksight_records(bands)),
        "application/x-ndjson",
    )
    return table


def bands_metadata(
    bands: pa.Table, sales_in_window: int, day: date, table: Table, catalog: str
) -> dict:
    first, _ = bands_core.window(day)
    levels = bands.column("level").to_pylist()
    snapshot = table.current_snapshot()
    return {
        "table": bands_core.IDENTIFIER,
        "bands": bands.num_rows,
        **{f"bands_{level}": levels.count(level) for level in bands_core.LEVELS},
        "sales_in_window": sales_in_window,
        "window": f"{first.isoformat()} .. {day.isoformat()}",
        "snapshot_id": str(snapshot.snapshot_id) if snapshot else "",
        "preview": md_table(bands.to_pylist(), PREVIEW),
        **table_metadata(
            f"{catalog}.{bands_core.IDENTIFIER}",
            table.location(),
            iceberg_columns(table.schema(), bands_core.DESCRIPTIONS),
            bands.num_rows,
            snapshot_rows(table),
        ),
    }
