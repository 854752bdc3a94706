"""Price bands: what sold items of a kind went for over the 90 days ending with a day, and the
`pricing_intelligence.price_bands` Iceberg table that keeps them (its columns and descriptions)."""

from __future__ import annotations

import json
from datetime import date, timedelta

import duckdb
import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.types import DateType, DoubleType, LongType, NestedField, StringType

from smartgo_analytics.core import sales_table
from smartgo_analytics.layout import PRICE_BANDS_TABLE

IDENTIFIER = PRICE_BANDS_TABLE
WINDOW_DAYS = 90
# The finest grouping first; each coarser one is a roll-up of it.
LEVELS = {
    "category_brand_condition": ("tenant_id", "category", "brand", "condition"),
    "category_condition": ("tenant_id", "category", "condition"),
    "category": ("tenant_id", "category"),
}
PERCENTILES = {"p10": 0.10, "p25": 0.25, "median": 0.50, "p75": 0.75, "p90": 0.90}

# The columns of the sales table the bands are made from (SALES_SCHEMA).
SALES_COLUMNS = ("tenant_id", "category", "brand", "condition", "sold_price", "sold_date")

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


def window(day: date) -> tuple[date, date]:
    """The first and last day of the window that ends with `day`."""
    return day - timedelta(days=WINDOW_DAYS - 1), day


def price_bands(sales: pa.Table | pa.RecordBatchReader, day: date) -> pa.Table:
    """One row per tenant x category x brand x condition, and per coarser roll-up (`level`), of
    the sales in the window ending with `day`: the count, p10, p25, median, p75, p90 (linear
    interpolation between the sold prices) and mean. A rolled-up column is null; so is a
    column the source left empty, which `level` tells apart. `sales` holds SALES_COLUMNS."""
    first, last = window(day)
    sets = ", ".join(f"({', '.join(keys)})" for keys in LEVELS.values())
    quantiles = ", ".join(
        f"quantile_cont(sold_price, {q}) AS {name}" for name, q in PERCENTILES.items()
    )
    query = f"""
        SELECT DATE '{day}' AS band_date,
               CASE GROUPING(brand, condition) WHEN 0 THEN 'category_brand_condition'
                    WHEN 2 THEN 'category_condition' ELSE 'category' END AS level,
               tenant_id, category, brand, condition, COUNT(*) AS sales_count, {quantiles},
               AVG(sold_price) AS mean, DATE '{first}' AS window_start, DATE '{last}' AS window_end
        FROM sales
        WHERE sold_price IS NOT NULL
          AND CAST(sold_date AT TIME ZONE 'UTC' AS DATE) BETWEEN DATE '{first}' AND DATE '{last}'
        GROUP BY GROUPING SETS ({sets})
        ORDER BY level, tenant_id, category, brand, condition"""  # noqa: S608 - dates, not input
    with duckdb.connect() as connection:
        # One scan, in one thread: a stream of batches is read once, and aggregated as it comes
        # (only each group's prices are held).
        connection.execute("SET threads TO 1")
        source = sales.select(list(SALES_COLUMNS)) if isinstance(sales, pa.Table) else sales
        connection.register("sales", source)
        bands = connection.execute(query).fetch_arrow_table()
    return bands.cast(ARROW_SCHEMA) if bands.num_rows else ARROW_SCHEMA.empty_table()


def band_problems(bands: pa.Table) -> list[str]:
    """Bands that break their own rules: a count under 1, or p10 > median or median > p90."""
    problems = []
    for band in bands.to_pylist():
        name = " / ".join(str(band[c]) for c in ("tenant_id", "category", "brand", "condition"))
        if band["sales_count"] < 1:
            problems.append(f"{name}: {band['sales_count']} sales")
        if not band["p10"] <= band["median"] <= band["p90"]:
            problems.append(
                f"{name}: p10 {band['p10']}, median {band['median']}, p90 {band['p90']}"
            )
    return problems


def quicksight_records(bands: pa.Table) -> list[dict]:
    """The bands as the QuickSight dataset's records: each named by its tenant, level and kind, dates
    as ISO text."""
    records = []
    for band in bands.to_pylist():
        kind = [
            band["tenant_id"],
            band["level"],
            band["category"],
            band["brand"],
            band["condition"],
        ]
        band["band_id"] = json.dumps(
            kind, ensure_ascii=False
        )  # unambiguous, whatever the names hold
        for name in ("band_date", "window_start", "window_end"):
            band[name] = band[name].isoformat()
        records.append(band)
    return records
