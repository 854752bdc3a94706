"""The `pricing_intelligence.price_bands` Iceberg table: its columns, their descriptions, and the
columns of the sales table the bands are made from."""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.types import DateType, DoubleType, LongType, NestedField, StringType

from smartgo_analytics.core import sales_table
from smartgo_analytics.core.price_bands import PERCENTILES, SALES_COLUMNS

_COLUMNS = (
    ("band_date", DateType(), True),
    ("level", StringType(), True),
    ("tenant_id", StringType(), True),
    ("category", StringType(), False),
    ("brand", StringType(), False),
    ("condition", StringType(), False),
    ("sales_count", LongType(), True),
    *((name, DoubleType(), True) for name in PERCENTILES),
    ("mean", DoubleType(), True),
    ("window_start", DateType(), True),
    ("window_end", DateType(), True),
)
DESCRIPTIONS = {
    "band_date": "the day the 90-day window ends",
    "level": "the grouping: which of category, brand, condition it is by",
    "tenant_id": "the tenant",
    "category": "category (null: rolled up)",
    "brand": "brand (null: rolled up)",
    "condition": "condition (null: rolled up)",
    "sales_count": "sales in the window",
    "p10": "10th percentile of the sold prices",
    "p25": "25th percentile",
    "median": "median sold price",
    "p75": "75th percentile",
    "p90": "90th percentile",
    "mean": "mean sold price",
    "window_start": "first day of the window",
    "window_end": "last day of the window",
}
SCHEMA = Schema(
    *(
        NestedField(field_id=n, name=name, field_type=kind, required=required)
        for n, (name, kind, required) in enumerate(_COLUMNS, start=1)
    )
)
ARROW_SCHEMA = SCHEMA.as_arrow()
# The columns of the sales table the bands are made from, typed as the table declares them.
SALES_SCHEMA = pa.schema([sales_table.ARROW_SCHEMA.field(name) for name in SALES_COLUMNS])
