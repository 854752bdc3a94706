"""Two models' indexes of one tenant compared on the same sales: do their nearest neighbours
agree, and which one's comparables price the held-out days' sales better (the median absolute
percentage error of the suggested price, as `comparables_price_error` measures it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa

from smartgo_analytics.comparables.answer import Comparable, nearest, suggested_band
from smartgo_analytics.similarity.index import TenantIndex

K = 10
MOST_PRODUCTS = 1000  # products compared a tenant, at most


@dataclass
class Comparison:
    agreements: list[float] = field(default_factory=list)  # per product: shared neighbours / K
    errors: dict[str, list[float]] = field(default_factory=lambda: {"current": [], "other": []})

    def add(self, other: Comparison) -> None:
        self.agreements += other.agreements
        for name, values in other.errors.items():
            self.errors[name] += values

    def figures(self) -> dict:
        def median(values: list[float]) -> float | None:
            return round(float(np.median(values)), 4) if values else None

        return {
            "products_compared": len(self.agreements),
            "neighbour_agreement": round(float(np.mean(self.agreements)), 4)
            if self.agreements
            else None,
            "held_out_sales_priced": len(self.errors["current"]),
            "price_error_current": median(self.errors["current"]),
            "price_error_other": median(self.errors["other"]),
        }


def _items(index: TenantIndex) -> pa.Table:
    tables = [index.segment_items(s.name) for s in index.manifest.segments]
    return pa.concat_tables(tables) if tables else pa.table({})


def _priced(index: TenantIndex, key: int, product_id: str, day: date) -> list[Comparable]:
    """The K nearest sold before `day`: what the day's sale would have been priced from."""
    vector = index.vector(key)
    if vector is None:
        return []
    found = nearest(index, vector, key, product_id, {}, K * 4)
    return [item for item in found if date.fromisoformat(item.sold_date) < day][:K]


def compare_tenant(current: TenantIndex, other: TenantIndex, held_out: set[str]) -> Comparison:
    """The comparison over the products both indexes hold (at most MOST_PRODUCTS, the held-out
    days' first): neighbour agreement for each; for a held-out day's sale, each model's error."""
    comparison = Comparison()
    items = _items(current).to_pylist()
    items.sort(key=lambda item: item["sold_date"].date().isoformat() not in held_out)
    for item in items[:MOST_PRODUCTS]:
        product = item["product_id"]
        key_other = other.find_product(product)
        if key_other is None:
            continue
        vectors = current.vector(item["key"]), other.vector(key_other)
        if vectors[0] is None or vectors[1] is None:
            continue
        mine = nearest(current, vectors[0], item["key"], product, {}, K)
        theirs = nearest(other, vectors[1], key_other, product, {}, K)
        if not mine or not theirs:
            continue
        shared = {c.product_id for c in mine} & {c.product_id for c in theirs}
        comparison.agreements.append(len(shared) / min(K, len(mine), len(theirs)))
        day = item["sold_date"].date()
        actual = float(item["sold_price"])
        if day.isoformat() not in held_out or actual <= 0:
            continue
        priced = {
            "current": _priced(current, item["key"], product, day),
            "other": _priced(other, key_other, product, day),
        }
        if all(priced.values()):
            for name, found in priced.items():
                comparison.errors[name].append(abs(suggested_band(found).median - actual) / actual)
    return comparison
