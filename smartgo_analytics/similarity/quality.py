"""How good a day's vectors look: norms, duplicates, neighbours and drift, with plain data; and the
per-category sums drift is measured against."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pyarrow as pa

from smartgo_analytics.core.vectors import unit
from smartgo_analytics.similarity.index import TenantIndex
from smartgo_analytics.similarity.segments import DaySpool, batches, key_days
from smartgo_analytics.similarity.thresholds import QualityThresholds

NEIGHBOURS = 10
TRAILING_DAYS = 30
SAMPLE = 300  # sales of a tenant's day whose neighbours are looked up
SEARCHED = 50  # candidates asked of the index, before those outside the 30 days are left out
MIN_DRIFT_SALES = 5  # a category's sales on each side before its drift is measured


@dataclass
class DayQuality:
    vectors: int = 0
    norm_sum: float = 0.0
    norm_squares: float = 0.0
    norm_min: float = float("inf")
    norm_max: float = 0.0
    images_by_vector: dict[bytes, set[str]] = field(default_factory=dict)
    rows_by_vector: dict[bytes, int] = field(default_factory=dict)
    agreement_sum: float = 0.0
    agreement_sales: int = 0
    drifts: dict[str, float] = field(default_factory=dict)  # "tenant/category" -> distance

    @classmethod
    def combined(cls, parts: Iterable[DayQuality]) -> DayQuality:
        """The figures of all the parts (each tenant's day, say), in one pass: a vector equal to
        another part's image counts as a duplicate."""
        whole = cls()
        rows: Counter[bytes] = Counter()
        for part in parts:
            whole.vectors += part.vectors
            whole.norm_sum += part.norm_sum
            whole.norm_squares += part.norm_squares
            whole.norm_min = min(whole.norm_min, part.norm_min)
            whole.norm_max = max(whole.norm_max, part.norm_max)
            for print_, found in part.images_by_vector.items():
                whole.images_by_vector.setdefault(print_, set()).update(found)
            rows.update(part.rows_by_vector)
            whole.agreement_sum += part.agreement_sum
            whole.agreement_sales += part.agreement_sales
            whole.drifts.update(part.drifts)
        whole.rows_by_vector = dict(rows)
        return whole

    def __add__(self, other: DayQuality) -> DayQuality:
        return DayQuality.combined([self, other])

    def add_norms(self, vectors: np.ndarray) -> None:
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        self.vectors += len(norms)
        self.norm_sum += float(norms.sum())
        self.norm_squares += float((norms**2).sum())
        self.norm_min = min(self.norm_min, float(norms.min()))
        self.norm_max = max(self.norm_max, float(norms.max()))

    def add_fingerprints(self, vectors: np.ndarray, images: list[str | None]) -> None:
        for row, image in zip(vectors, images, strict=True):
            print_ = hashlib.blake2b(row.tobytes(), digest_size=12).digest()
            self.images_by_vector.setdefault(print_, set()).add(image or "")
            self.rows_by_vector[print_] = self.rows_by_vector.get(print_, 0) + 1

    @property
    def duplicate_share(self) -> float:
        """Share of the vectors equal to a vector of another image."""
        shared = sum(
            self.rows_by_vector[p] for p, images in self.images_by_vector.items() if len(images) > 1
        )
        return shared / self.vectors if self.vectors else 0.0

    @property
    def neighbour_agreement(self) -> float | None:
        return self.agreement_sum / self.agreement_sales if self.agreement_sales else None

    def metadata(self) -> dict[str, float | int | str]:
        mean = self.norm_sum / self.vectors if self.vectors else 0.0
        spread = (
            max(self.norm_squares / self.vectors - mean**2, 0.0) ** 0.5 if self.vectors else 0.0
        )
        worst = max(self.drifts.items(), key=lambda item: item[1], default=("", 0.0))
        agreement = self.neighbour_agreement
        return {
            "vectors": self.vectors,
            "norm_mean": round(mean, 6),
            "norm_std": round(spread, 6),
            "norm_min": round(self.norm_min if self.vectors else 0.0, 6),
            "norm_max": round(self.norm_max, 6),
            "duplicate_vector_share": round(self.duplicate_share, 6),
            "neighbour_agreement": round(agreement, 4) if agreement is not None else float("nan"),
            "neighbour_sales_sampled": self.agreement_sales,
            "drift_max": round(worst[1], 6),
            "drift_max_category": worst[0] or "none",
            "drift_mean": round(float(np.mean(list(self.drifts.values()))), 6)
            if self.drifts
            else 0.0,
            "drift_categories": len(self.drifts),
        }

    def problems(self, limits: QualityThresholds) -> list[str]:
        found = []
        agreement = self.neighbour_agreement
        if agreement is not None and agreement < limits.min_neighbour_agreement:
            found.append(f"neighbour agreement {agreement:.3f} < {limits.min_neighbour_agreement}")
        worst = max(self.drifts.items(), key=lambda item: item[1], default=None)
        if worst and worst[1] > limits.max_drift:
            found.append(f"drift {worst[1]:.3f} of {worst[0]} > {limits.max_drift}")
        if self.duplicate_share > limits.max_duplicate_share:
            found.append(
                f"{self.duplicate_share:.1%} of the vectors equal another image's "
                f"(> {limits.max_duplicate_share:.1%})"
            )
        return found


def neighbour_agreement(
    index: TenantIndex,
    day: date,
    keys: np.ndarray,
    queries: np.ndarray,
    categories: list[str | None],
) -> list[float]:
    """For each query, the share of its nearest NEIGHBOURS sold in the TRAILING_DAYS ending with the
    day (itself left out) whose category is its own."""
    found, _ = index.search(queries, SEARCHED)
    first = (day - timedelta(days=TRAILING_DAYS - 1)).toordinal()
    days = key_days(found)
    usable = (found != 0) & (found != keys[:, None]) & (days >= first) & (days <= day.toordinal())
    chosen = [row[keep][:NEIGHBOURS] for row, keep in zip(found, usable, strict=True)]
    wanted = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.uint64)
    items = index.items(wanted)
    category_of = dict(
        zip(items.column("key").to_pylist(), items.column("category").to_pylist(), strict=True)
    )
    shares = []
    for row, category in zip(chosen, categories, strict=True):
        if len(row):
            shares.append(sum(category_of.get(int(k)) == category for k in row) / len(row))
    return shares


def measure_day(
    index: TenantIndex, day: date, spool: DaySpool, trailing: list[pa.Table]
) -> DayQuality:
    """One tenant's day: its vectors' quality figures, against its index and the per-category
    sums of its `trailing` days."""
    quality = DayQuality()
    items = spool.item_table(day)
    vectors = spool.vectors()
    images = items.column("image_sha256").to_pylist()
    categories = items.column("category").to_pylist()
    for start, chunk in batches(vectors):
        quality.add_norms(chunk)
        quality.add_fingerprints(chunk, images[start : start + len(chunk)])
    rng = np.random.default_rng(day.toordinal())
    sample = np.sort(rng.choice(len(vectors), min(SAMPLE, len(vectors)), replace=False))
    keys = items.column("key").to_numpy()[sample]
    shares = neighbour_agreement(
        index, day, keys, vectors.take(sample), [categories[i] for i in sample]
    )
    quality.agreement_sum += sum(shares)
    quality.agreement_sales += len(shares)
    before = combined_means(trailing)
    now = combined_means([category_sums(categories, vectors)])
    for category, (count, total) in now.items():
        earlier = before.get(category)
        if count >= MIN_DRIFT_SALES and earlier and earlier[0] >= MIN_DRIFT_SALES:
            distance = cosine_distance(total, earlier[1])
            quality.drifts[f"{spool.tenant}/{category}"] = distance
    return quality


# Category sums: what drift is measured against.

CATEGORY_SUMS_SCHEMA = pa.schema(
    [
        pa.field("category", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("sum", pa.list_(pa.float64())),
    ]
)


def category_sums(categories: list[str | None], vectors) -> pa.Table:
    """Per category, the count and the sum of its unit vectors."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    names = np.array([category or "" for category in categories], dtype=object)
    for start, chunk in batches(vectors):
        units = unit(chunk).astype(np.float64)
        of_chunk = names[start : start + len(chunk)]
        for name in set(of_chunk):
            mine = of_chunk == name
            sums[name] = sums.get(name, 0) + units[mine].sum(axis=0)
            counts[name] = counts.get(name, 0) + int(mine.sum())
    ordered = sorted(sums)
    return pa.table(
        {
            "category": ordered,
            "count": [counts[n] for n in ordered],
            "sum": [sums[n].tolist() for n in ordered],
        },
        schema=CATEGORY_SUMS_SCHEMA,
    )


def combined_means(tables: Iterable[pa.Table]) -> dict[str, tuple[int, np.ndarray]]:
    total: dict[str, tuple[int, np.ndarray]] = {}
    for table in tables:
        for row in table.to_pylist():
            count, vector = total.get(row["category"], (0, 0))
            total[row["category"]] = (count + row["count"], vector + np.asarray(row["sum"]))
    return total


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 if norm == 0 else 1.0 - float(np.dot(a, b)) / norm
