"""Prices people can trust: asked by product id, comparables of the product's own category; prices
brought to its condition by multipliers learned from the tenant's sales and shrunk when evidence
is thin; and an answer that says how strong it is. A tenant's index written as the asset writes
it, with vectors chosen so that a chair and a ring look alike."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from smartgo_analytics.comparables import ComparablesError, Source, comparables, suggested_band
from smartgo_analytics.comparables.adjust import (
    PRIOR_SALES,
    adjusted,
    condition_multipliers,
    strength,
)
from smartgo_analytics.resources.embeddings import LocalVisualEmbedder
from smartgo_analytics.resources.object_store import LocalObjectStore
from smartgo_analytics.similarity.segments import ITEM_SCHEMA, DaySpool
from smartgo_analytics.similarity.store import commit_day

DIMENSION = 256
TENANT = "carousel-labs"
DAY = date(2025, 6, 30)
PRICE = {"New": 300.0, "Like New": 250.0, "Good": 200.0, "Fair": 100.0}


def items_table(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"category": c, "condition": q, "sold_price": p, "sold_date": d} for c, q, p, d in rows]
    )


def test_multipliers_are_learned_per_category_in_the_window_and_shrunk_when_thin():
    at = datetime(2025, 6, 1, tzinfo=UTC)
    rows = [("Chairs", q, PRICE[q], at) for q in ("New", "Good") for _ in range(40)]
    rows += [("Chairs", "Fair", PRICE["Fair"], at)] * 2  # two sales: little evidence
    rows += [("Rings", "New", 5000.0, at)] * 40  # another category: not counted
    rows += [("Chairs", "Good", 9999.0, at - timedelta(days=200))] * 40  # outside the 90 days
    rows += [("Chairs", "New", 1.0, datetime(2025, 6, 30, tzinfo=UTC))] * 40  # the asked day
    multipliers = condition_multipliers(items_table(rows), "Chairs", DAY)
    median = np.median([PRICE["New"]] * 40 + [PRICE["Good"]] * 40 + [PRICE["Fair"]] * 2)
    weight = 40 / (40 + PRIOR_SALES)
    assert multipliers["New"] == pytest.approx((PRICE["New"] / median) ** weight)
    assert multipliers["Good"] == pytest.approx((PRICE["Good"] / median) ** weight)
    # Two Fair sales say the condition is worth 40% of the category; shrunk, far less than that.
    raw = PRICE["Fair"] / median
    assert raw < multipliers["Fair"] < 1 and multipliers["Fair"] == pytest.approx(
        raw ** (2 / (2 + PRIOR_SALES))
    )
    assert adjusted(200.0, "Good", "New", multipliers) > 200.0
    assert adjusted(200.0, "Good", "Mint", multipliers) == 200.0  # never sold: not adjusted
    assert condition_multipliers(items_table(rows), "Lamps", DAY) == {}


def test_the_verdict_is_plain_when_an_answer_is_weak():
    assert strength([0.9] * 8, 95, 100, 105).verdict == "strong"
    few = strength([0.9] * 3, 95, 100, 105)
    assert few.verdict.startswith("weak: too few comparables (3")
    unlike = strength([0.2] * 8, 95, 100, 105).verdict
    assert "too unlike (median similarity 0.20" in unlike
    spread = strength([0.9] * 8, 50, 100, 190)
    assert spread.spread == pytest.approx(1.4) and "too spread" in spread.verdict


@pytest.fixture
def store(tmp_path):
    """A tenant's index: chairs of four conditions and rings, all pictures nearly alike, 30 days
    of history and the asked day."""
    store = LocalObjectStore(lake_dir=str(tmp_path / "lake"), bucket="lake")
    rng = np.random.default_rng(7)
    base = rng.standard_normal(DIMENSION).astype(np.float32)
    model = LocalVisualEmbedder(dimension=DIMENSION).model_id
    for back in range(30, -1, -1):
        day = DAY - timedelta(days=back)
        rows, vectors = [], []
        for n, (category, condition) in enumerate(
            [("Chairs", q) for q in PRICE] + [("Rings", "New"), ("Rings", "Good")]
        ):
            price = PRICE[condition] * (20 if category == "Rings" else 1)
            rows.append(
                {
                    "product_id": f"P-{day:%Y%m%d}-{n}",
                    "category": category,
                    "brand": "Acme",
                    "condition": condition,
                    "sold_price": price * rng.uniform(0.95, 1.05),
                    "sold_date": datetime.combine(day, datetime.min.time(), UTC)
                    + timedelta(hours=n),
                    "image_sha256": f"{n}",
                }
            )
            vectors.append(base + 0.05 * rng.standard_normal(DIMENSION).astype(np.float32))
        work = tmp_path / f"work-{day}"
        work.mkdir()
        spool = DaySpool(Path(work), TENANT, DIMENSION)
        spool.add(pa.Table.from_pylist(rows, schema=ITEM_SCHEMA.remove(0)).to_batches()[0],
                  np.stack(vectors))  # fmt: skip
        commit_day(store, TENANT, DIMENSION, day, spool, Path(work), model)
    return store


def ask(store, **question):
    embedder = LocalVisualEmbedder(dimension=DIMENSION)
    source = Source(resources={"object_store": store, "image_embedder": embedder})
    return comparables(source=source, **question)


def test_asked_by_product_id_the_comparables_are_of_its_category_priced_in_its_condition(store):
    asked = f"P-{DAY:%Y%m%d}-0"  # a New chair
    found = ask(store, product_id=asked, k=12)
    assert {item.category for item in found.items} == {"Chairs"}
    assert found.asked["category"] == "Chairs" and found.asked["condition"] == "New"
    assert found.categories == {"Chairs": 12}
    for item in found.items:  # every chair's price brought to New
        assert item.adjusted_price == pytest.approx(PRICE["New"], rel=0.25), item
    sold = [i.sold_price for i in found.items]
    assert min(sold) < 150  # Fair chairs among them, sold at half of New: unadjusted, they drag
    unadjusted = suggested_band([replace(i, adjusted_price=None) for i in found.items])
    error = abs(found.suggested.median - PRICE["New"]) / PRICE["New"]
    assert error < 0.2 and error < abs(unadjusted.median - PRICE["New"]) / PRICE["New"] - 0.1
    assert found.strength.verdict == "strong" and found.strength.comparables == 12
    json = found.as_json()
    assert json["strength"]["verdict"] == "strong" and "adjusted_price" in json["comparables"][0]
    assert json["suggested_price"]["p10"] <= json["suggested_price"]["p25"]

    # Widened on purpose: rings come in, and the answer says which categories it holds.
    wide = ask(store, product_id=asked, k=12, any_category=True)
    assert set(wide.categories) == {"Chairs", "Rings"}
    assert wide.suggested.p75 > found.suggested.p75  # the rings' prices

    # Asked for a condition, only that condition, nothing to adjust.
    fair = ask(store, product_id=asked, k=5, condition="Fair")
    assert {i.condition for i in fair.items} == {"Fair"}
    assert all(i.adjusted_price == pytest.approx(i.sold_price, abs=0.006) for i in fair.items)


def test_asked_by_picture_the_answer_names_its_categories_and_is_weak_when_few(store):
    from smartgo_analytics.local.drawings import draw_product_image

    by_picture = ask(store, image=draw_product_image("Home", "Acme", 0), tenant=TENANT, k=3)
    assert sum(by_picture.categories.values()) == 3
    assert set(by_picture.categories) <= {"Chairs", "Rings"}
    assert by_picture.asked["category"] is None  # a picture has no category of its own
    assert by_picture.strength.verdict.startswith("weak: too few comparables (3")
    with pytest.raises(ComparablesError, match="no other sold item of category 'Lamps'"):
        ask(store, product_id=f"P-{DAY:%Y%m%d}-0", category="Lamps")


def test_the_closest_comparables_count_most_whatever_the_models_scale_of_similarity():
    from smartgo_analytics.comparables.answer import similarity_weights

    titan = similarity_weights(np.array([0.92, 0.85, 0.80, 0.75, 0.61]))
    local = similarity_weights(np.array([0.9992, 0.9985, 0.9980, 0.9975, 0.9961]))
    assert titan[0] == 1 and titan[2] == pytest.approx(np.exp(-1)) and titan[4] < 0.1
    np.testing.assert_allclose(titan, local, rtol=1e-3)  # the same shape on both scales


def test_the_product_asked_about_is_left_out_of_its_own_multiplier():
    at = datetime(2025, 6, 1, tzinfo=UTC)
    table = pa.Table.from_pylist(
        [{"product_id": f"N-{n}", "category": "Chairs", "condition": "New", "sold_price": 300.0,
          "sold_date": at} for n in range(10)]
        + [{"product_id": "F-1", "category": "Chairs", "condition": "Fair", "sold_price": 30.0,
            "sold_date": at}]
    )  # fmt: skip
    assert "Fair" in condition_multipliers(table, "Chairs", DAY)
    assert "Fair" not in condition_multipliers(table, "Chairs", DAY, leave_out="F-1")
