"""The price bands and the embedding-quality measures on plain data: small tables and arrays whose
answers are worked out by hand."""

import json
import math
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest

from smartgo_analytics.core import price_bands as bands
from smartgo_analytics.similarity.quality import DayQuality
from smartgo_analytics.similarity.thresholds import QualityThresholds

DAY = date(2025, 3, 31)


def sales(*rows: tuple) -> pa.Table:
    """(tenant, category, brand, condition, price, day) rows as the sales table types them."""
    names = bands.SALES_COLUMNS
    columns = {name: [row[n] for row in rows] for n, name in enumerate(names)}
    columns["sold_date"] = [
        datetime(d.year, d.month, d.day, 15, tzinfo=UTC) for d in columns["sold_date"]
    ]
    return pa.table(columns, schema=bands.SALES_SCHEMA)


def test_the_window_is_the_90_days_ending_with_the_day():
    assert bands.window(DAY) == (date(2025, 1, 1), DAY)


def test_bands_are_interpolated_percentiles_per_kind_and_roll_up_to_coarser_kinds():
    table = sales(
        *(
            ("t", "Toys", "Lego", "Good", price, date(2025, 3, 1))
            for price in (10.0, 20.0, 30.0, 40.0, 50.0)
        ),
        ("t", "Toys", "Duplo", "Good", 100.0, DAY),
        ("t", "Toys", "Lego", "Good", 999.0, date(2024, 12, 31)),  # the day before the window
        ("t", "Toys", "Lego", "Good", None, DAY),  # no price: not counted
        ("t", None, "Lego", "New", 7.0, DAY),  # an empty category stays a kind of its own
    )
    rows = bands.price_bands(table, DAY).to_pylist()
    by_kind = {(r["level"], r["category"], r["brand"], r["condition"]): r for r in rows}

    lego = by_kind[("category_brand_condition", "Toys", "Lego", "Good")]
    # quantile_cont over 10..50: position q x 4 between the sorted prices.
    assert (
        lego["sales_count"],
        lego["p10"],
        lego["p25"],
        lego["median"],
        lego["p75"],
        lego["p90"],
        lego["mean"],
    ) == (5, 14.0, 20.0, 30.0, 40.0, 46.0, 30.0)
    assert (lego["window_start"], lego["window_end"], lego["band_date"]) == (
        date(2025, 1, 1),
        DAY,
        DAY,
    )
    toys_good = by_kind[("category_condition", "Toys", None, "Good")]
    assert (toys_good["sales_count"], toys_good["median"]) == (6, 35.0)
    assert by_kind[("category", "Toys", None, None)]["sales_count"] == 6
    # The empty category is told apart from a roll-up by its level.
    assert by_kind[("category_brand_condition", None, "Lego", "New")]["sales_count"] == 1
    assert by_kind[("category", None, None, None)]["sales_count"] == 1
    assert len(rows) == 3 + 2 + 2 and bands.band_problems(bands.price_bands(table, DAY)) == []


def test_no_sale_in_the_window_gives_an_empty_table_of_the_bands_schema():
    empty = bands.price_bands(sales(("t", "Toys", "Lego", "Good", 5.0, date(2024, 1, 1))), DAY)
    assert empty.num_rows == 0 and empty.schema == bands.ARROW_SCHEMA


def test_a_band_breaking_its_own_rules_is_named():
    good = {
        "tenant_id": "t",
        "category": "Toys",
        "brand": "Lego",
        "condition": "Good",
        "sales_count": 3,
        "p10": 1.0,
        "median": 2.0,
        "p90": 3.0,
    }
    broken = {**good, "brand": "Duplo", "sales_count": 0, "p10": 5.0}
    assert bands.band_problems(pa.Table.from_pylist([good, broken])) == [
        "t / Toys / Duplo / Good: 0 sales",
        "t / Toys / Duplo / Good: p10 5.0, median 2.0, p90 3.0",
    ]


def test_quicksight_records_name_each_band_unambiguously_with_iso_dates():
    table = sales(("t", 'Toys "x", y', None, "Good", 5.0, DAY))
    records = bands.quicksight_records(bands.price_bands(table, DAY))
    finest = [r for r in records if r["level"] == "category_brand_condition"][0]
    assert json.loads(finest["band_id"]) == [
        "t",
        "category_brand_condition",
        'Toys "x", y',
        None,
        "Good",
    ]
    assert (finest["band_date"], finest["window_start"]) == ("2025-03-31", "2025-01-01")
    assert len({r["band_id"] for r in records}) == len(records)


def test_day_quality_measures_norms_duplicates_and_judges_them_against_the_thresholds():
    quality = DayQuality()
    a, b = np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 3.0]], np.float32)
    day = np.vstack([a, a, b, b])
    quality.add_norms(day)
    # The same vector for two pictures is a duplicate; for one picture sold twice it is not.
    quality.add_fingerprints(day, ["p1", "p2", "p3", "p3"])
    assert quality.duplicate_share == 0.5
    metadata = quality.metadata()
    assert (metadata["norm_min"], metadata["norm_max"]) == (1.0, 3.0)
    assert metadata["drift_max_category"] == "none" and math.isnan(metadata["neighbour_agreement"])

    quality.agreement_sum, quality.agreement_sales = 1.2, 3  # 0.4 on average
    quality.drifts = {"t/Toys": 0.3, "t/Books": 0.1}
    limits = QualityThresholds(min_neighbour_agreement=0.5, max_drift=0.2, max_duplicate_share=0.01)
    assert quality.problems(limits) == [
        "neighbour agreement 0.400 < 0.5",
        "drift 0.300 of t/Toys > 0.2",
        "50.0% of the vectors equal another image's (> 1.0%)",
    ]
    assert quality.problems(QualityThresholds(0.35, 0.3, 0.5)) == []


def test_norm_spread_of_a_day():
    quality = DayQuality()
    quality.add_norms(np.array([[1.0, 0.0], [0.0, 3.0]], np.float32))
    metadata = quality.metadata()
    assert metadata["norm_mean"] == pytest.approx(2.0) and metadata["norm_std"] == pytest.approx(
        1.0
    )
    assert DayQuality().metadata()["vectors"] == 0


def test_two_tenants_days_add_up_as_one_day_with_a_duplicate_across_them():
    a, b = np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 3.0]], np.float32)
    first, second = DayQuality(), DayQuality()
    first.add_norms(np.vstack([a, b]))
    first.add_fingerprints(np.vstack([a, b]), ["p1", "p2"])
    first.agreement_sum, first.agreement_sales, first.drifts = 0.5, 1, {"t1/Toys": 0.1}
    second.add_norms(a)
    second.add_fingerprints(a, ["p9"])  # another tenant's picture with the first's vector
    second.agreement_sum, second.agreement_sales, second.drifts = 1.0, 1, {"t2/Toys": 0.3}

    both = first + second
    assert both.vectors == 3 and both.duplicate_share == pytest.approx(2 / 3)
    assert (both.norm_min, both.norm_max) == (1.0, 3.0)
    assert both.neighbour_agreement == 0.75
    assert both.drifts == {"t1/Toys": 0.1, "t2/Toys": 0.3}
    # Neither side is changed by the sum.
    assert (
        first.vectors == 2
        and first.duplicate_share == 0.0
        and second.images_by_vector != (both.images_by_vector)
    )
    assert (DayQuality() + first).metadata() == first.metadata()
