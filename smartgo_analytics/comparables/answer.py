"""An answer: the comparables found in a tenant's index, each price brought to the asked item's
condition (`adjust`), the price band they suggest, and how strong it is."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import datetime

import numpy as np

from smartgo_analytics.comparables.adjust import Strength, adjusted, strength
from smartgo_analytics.similarity.index import TenantIndex

SHOWN = (
    "product_id",
    "category",
    "brand",
    "condition",
    "sold_price",
    "adjusted_price",
    "sold_date",
    "similarity",
)
SEARCHED_PER_WANTED = 20  # candidates asked for each item wanted when a category narrows them
MOST_SEARCHED = 4_000


@dataclass(frozen=True)
class Comparable:
    product_id: str
    category: str | None
    brand: str | None
    condition: str | None
    sold_price: float
    sold_date: str
    similarity: float
    image_sha256: str | None = (
        None  # its picture's copy: layout.image_key(tenant, product, sha, ext)
    )
    adjusted_price: float | None = None  # its price in the asked item's condition


@dataclass(frozen=True)
class PriceBand:
    """A similarity-weighted median of the comparables' adjusted prices, with their weighted p25
    and p75 (about half of true prices fall between) and p10 and p90."""

    median: float
    p25: float
    p75: float
    comparables: int
    p10: float | None = None
    p90: float | None = None


@dataclass(frozen=True)
class Comparables:
    tenant: str
    query: str
    items: list[Comparable]
    suggested: PriceBand
    model: str | None = None  # whose vectors answered
    strength: Strength | None = None
    asked: dict | None = None  # the asked item's category and condition, as the answer took them
    categories: dict | None = None  # how many comparables of each category

    def rows(self) -> list[dict]:
        return [asdict(item) for item in self.items]

    def as_json(self) -> dict:
        """What `comparables --format json` prints and the page's API answers."""
        return {
            "tenant": self.tenant,
            "query": self.query,
            "model": self.model,
            "asked": self.asked,
            "suggested_price": asdict(self.suggested),
            "strength": asdict(self.strength) if self.strength else None,
            "categories": self.categories,
            "comparables": self.rows(),
        }


def suggested_band(items: list[Comparable]) -> PriceBand:
    """The comparables' adjusted prices (their sold prices when not adjusted), each weighted by
    its similarity: median, p25 and p75, p10 and p90."""
    if not items:
        raise ValueError("a suggested price needs at least one comparable")
    prices = np.array([_price(item) for item in items])
    weights = similarity_weights(np.array([item.similarity for item in items]))
    p10, p25, median, p75, p90 = weighted_quantiles(prices, weights, (0.1, 0.25, 0.5, 0.75, 0.9))
    return PriceBand(
        round_price(median),
        round_price(p25),
        round_price(p75),
        len(items),
        round_price(p10),
        round_price(p90),
    )


def similarity_weights(similarities: np.ndarray) -> np.ndarray:
    """How much each comparable counts: exp(-(best - s) / (best - median s)). Relative to the
    answer's own similarities, so the same for every model (Titan's similarities spread over
    tenths, the local embedder's over thousandths): the closest count most, the median one e^-1
    as much."""
    best = float(similarities.max())
    scale = max(best - float(np.median(similarities)), 1e-4)
    return np.exp(-(best - similarities) / scale)


def _price(item: Comparable) -> float:
    return item.sold_price if item.adjusted_price is None else item.adjusted_price


def answered(tenant, query, items, model, asked: dict, multipliers: dict) -> Comparables:
    """The answer: each comparable's price brought to the asked condition, the band, its strength
    and the comparables' categories."""
    condition = asked.get("condition")
    items = [
        replace(i, adjusted_price=round_price(adjusted(i.sold_price, i.condition, condition, multipliers)))
        for i in items
    ]  # fmt: skip
    band = suggested_band(items)
    judged = strength([i.similarity for i in items], band.p25, band.median, band.p75)
    categories: dict[str, int] = {}
    for item in items:
        categories[item.category or "(none)"] = categories.get(item.category or "(none)", 0) + 1
    asked = {**asked, "multipliers": {c: round(m, 3) for c, m in sorted(multipliers.items())}}
    return Comparables(tenant, query, items, band, model, judged, asked, categories)


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


def nearest(index: TenantIndex, vector, key, product_id, kind: dict, k: int) -> list[Comparable]:
    """The k nearest items other than the query's own sales, of the kind (category, condition)
    asked: searched wider, four times at a step, while too few of the candidates are of the kind."""
    kind = {name: value for name, value in kind.items() if value is not None}
    first = k * SEARCHED_PER_WANTED if kind else k
    for wanted in _widening(first, len(index)):
        keys, similarities = index.search(vector, min(wanted + 1, len(index)))
        keys, similarities = keys[0], similarities[0]
        similarity = dict(zip(keys.tolist(), similarities.tolist(), strict=True))
        chosen = [
            item
            for item in index.items(keys[keys != 0]).to_pylist()
            if item["key"] != key
            and item["product_id"] != product_id
            and all(item[name] == value for name, value in kind.items())
        ][:k]
        if len(chosen) >= k:
            break
    return [_comparable(item, similarity[item["key"]]) for item in chosen]


def _widening(first: int, size: int) -> list[int]:
    """How many candidates each search asks for: `first`, four times more each time, until the
    whole index or MOST_SEARCHED is asked for."""
    steps = [first]
    while steps[-1] + 1 < size and steps[-1] < MOST_SEARCHED:
        steps.append(steps[-1] * 4)
    return steps


def _comparable(item: dict, similarity: float) -> Comparable:
    sold: datetime = item["sold_date"]
    return Comparable(
        item["product_id"],
        item["category"],
        item["brand"],
        item["condition"],
        float(item["sold_price"]),
        sold.date().isoformat(),
        round(similarity, 4),
        item.get("image_sha256"),
    )
