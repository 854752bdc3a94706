"""Prices brought to the asked item's condition, and how strong an answer is.

A comparable sold in another condition than the item asked about is not priced as it sold: its
price is multiplied by m(asked) / m(its own), where m(condition) is what that condition sells for
against the category as a whole, learned from the tenant's own sold items of the category over
the price bands' window up to the newest indexed day (the median price of the condition over the
median of the category; a product asked about is left out of its own), and
shrunk toward no adjustment (1) when the condition has few sales: in log terms,
log m = n / (n + PRIOR_SALES) * log(median ratio). A condition never sold in the window is not
adjusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from smartgo_analytics.core.price_bands import WINDOW_DAYS

PRIOR_SALES = 8  # sales of a condition that make its multiplier count half

# The verdict's thresholds: fewer comparables, a lower median similarity or a wider band (p75 - p25
# over the median) than these makes an answer weak, and says why.
FEWEST = 5
LEAST_SIMILAR = 0.5
WIDEST = 0.6


def condition_multipliers(
    items: pa.Table,
    category: str | None,
    as_of: date,
    leave_out: str | None = None,
    window_days: int = WINDOW_DAYS,
) -> dict[str, float]:
    """Each condition's multiplier in the category over [as_of - window, as_of): the items' median
    price in that condition over their median in all, shrunk by how many sold; `leave_out` (the
    product asked about) not counted. The category is filtered first: the rest runs on its rows."""
    if category is not None:
        items = items.filter(pc.equal(items.column("category"), category))
    start = datetime.combine(as_of - timedelta(days=window_days), datetime.min.time())
    end = datetime.combine(as_of, datetime.min.time())
    sold = pc.cast(items.column("sold_date"), pa.timestamp("us"))
    keep = pc.and_(
        pc.greater_equal(sold, pa.scalar(start, pa.timestamp("us"))),
        pc.less(sold, pa.scalar(end, pa.timestamp("us"))),
    )
    if leave_out is not None:
        keep = pc.and_(keep, pc.not_equal(items.column("product_id"), leave_out))
    window = items.filter(keep)
    prices = window.column("sold_price").to_numpy(zero_copy_only=False)
    conditions = window.column("condition").to_pylist()
    if len(prices) == 0:
        return {}
    overall = float(np.median(prices))
    multipliers = {}
    for condition in {c for c in conditions if c is not None}:
        mine = prices[[c == condition for c in conditions]]
        ratio = float(np.median(mine)) / overall if overall > 0 else 1.0
        if ratio <= 0:
            continue
        weight = len(mine) / (len(mine) + PRIOR_SALES)
        multipliers[condition] = math.exp(weight * math.log(ratio))
    return multipliers


def adjusted(price: float, its: str | None, asked: str | None, multipliers: dict) -> float:
    """The price brought from its condition to the asked one (unchanged when either is unknown)."""
    if asked is None or its is None or asked == its:
        return price
    if asked not in multipliers or its not in multipliers:
        return price
    return price * multipliers[asked] / multipliers[its]


@dataclass(frozen=True)
class Strength:
    """How far an answer can be trusted: how many comparables, how alike, how far apart their
    prices are, and a plain verdict ("strong", or "weak: …" with each reason)."""

    comparables: int
    median_similarity: float
    spread: float  # (p75 - p25) / median of the adjusted prices
    verdict: str


def strength(similarities: list[float], p25: float, median: float, p75: float) -> Strength:
    alike = float(np.median(similarities)) if similarities else 0.0
    spread = (p75 - p25) / median if median > 0 else math.inf
    reasons = []
    if len(similarities) < FEWEST:
        reasons.append(f"too few comparables ({len(similarities)}, fewer than {FEWEST})")
    if alike < LEAST_SIMILAR:
        reasons.append(f"too unlike (median similarity {alike:.2f}, under {LEAST_SIMILAR})")
    if spread > WIDEST:
        reasons.append(f"too spread (p25-p75 is {spread:.0%} of the price, over {WIDEST:.0%})")
    verdict = "weak: " + "; ".join(reasons) if reasons else "strong"
    return Strength(len(similarities), round(alike, 4), round(spread, 4), verdict)
