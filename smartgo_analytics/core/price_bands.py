"""Price bands: what sold items of a kind went for over the 90 days ending with a day."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta

import numpy as np
import pyarrow as pa

NAMESPACE = "pricing_intelligence"
IDENTIFIER = f"{NAMESPACE}.price_bands"
WINDOW_DAYS = 90
# The finest grouping first; each coarser one is a roll-up of it.
LEVELS = {
    "category_brand_condition": ("tenant_id", "category", "brand", "condition"),
    "category_condition": ("tenant_id", "category", "condition"),
    "category": ("tenant_id", "category"),
}
PERCENTILES = {"p10": 0.10, "p25": 0.25, "median": 0.50, "p75": 0.75, "p90": 0.90}

# The columns of the sales table the bands are made from (`price_bands_table.SALES_SCHEMA`).
SALES_COLUMNS = ("tenant_id", "category", "brand", "condition", "sold_price", "sold_date")


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
    # Loaded here, not above: the comparables and the web page import this module for its
    # quantiles alone, and answer sooner without DuckDB and pyiceberg (the `comparables_page`
    # benchmark's first answer).
    import duckdb

    from smartgo_analytics.core.price_bands_table import ARROW_SCHEMA

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


# The suggested price of comparables: their prices, each weighted by its similarity.


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, quantiles) -> list[float]:
    """Quantiles of `values` where each counts by its weight: the value where the running share
    of weight (taken at each value's middle) reaches the quantile, interpolated linearly."""
    order = np.argsort(values)
    values = np.asarray(values, dtype=float)[order]
    weights = np.clip(np.asarray(weights, dtype=float)[order], 1e-9, None)
    positions = (np.cumsum(weights) - weights / 2) / weights.sum()
    return [float(np.interp(q, positions, values)) for q in quantiles]


def round_price(value: float) -> float:
    return math.floor(value * 100 + 0.5) / 100
