"""The five QuickSight datasets: one spec table, one builder, one manifest format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

INSIGHT_TYPES = ("ANOMALY", "TREND", "RECOMMENDATION")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str  # the item kind it is built from, see `item_kind`
    identity: str  # the field that makes a record unique within a day
    fields: tuple[tuple[str, str], ...]  # (name, JSON type), `date` excluded
    order_by: str | None = None  # a numeric field, descending
    limit: int | None = None
    description: str = ""

    @property
    def field_names(self) -> tuple[str, ...]:
        return ("date", *(name for name, _ in self.fields))


DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="store_summaries",
        source="store",
        identity="store_id",
        description="Daily store performance metrics",
        fields=(
            ("store_id", "string"),
            ("store_name", "string"),
            ("region", "string"),
            ("total_revenue", "number"),
            ("transaction_count", "integer"),
            ("avg_transaction_value", "number"),
            ("items_sold", "integer"),
            ("unique_customers", "integer"),
        ),
    ),
    DatasetSpec(
        name="top_products",
        source="product",
        identity="product_id",
        order_by="revenue",
        limit=20,
        description="Top 20 products of the day by revenue",
        fields=(
            ("rank", "integer"),
            ("product_id", "string"),
            ("product_name", "string"),
            ("category", "string"),
            ("units_sold", "integer"),
            ("revenue", "number"),
            ("avg_price", "number"),
        ),
    ),
    DatasetSpec(
        name="anomalies",
        source="insight:ANOMALY",
        identity="insight_id",
        description="Detected anomalies",
        fields=(
            ("insight_id", "string"),
            ("severity", "string"),
            ("metric", "string"),
            ("store_id", "string"),
            ("product_id", "string"),
            ("observed_value", "number"),
            ("expected_value", "number"),
            ("deviation_pct", "number"),
            ("description", "string"),
        ),
    ),
    DatasetSpec(
        name="trends",
        source="insight:TREND",
        identity="insight_id",
        description="Identified trends",
        fields=(
            ("insight_id", "string"),
            ("metric", "string"),
            ("direction", "string"),
            ("change_pct", "number"),
            ("period_days", "integer"),
            ("store_id", "string"),
            ("description", "string"),
        ),
    ),
    DatasetSpec(
        name="recommendations",
        source="insight:RECOMMENDATION",
        identity="insight_id",
        description="Recommended actions",
        fields=(
            ("insight_id", "string"),
            ("priority", "string"),
            ("action", "string"),
            ("store_id", "string"),
            ("product_id", "string"),
            ("expected_impact", "number"),
            ("confidence", "number"),
            ("description", "string"),
        ),
    ),
)

DATASETS_BY_NAME = {spec.name: spec for spec in DATASETS}


def item_kind(item: Mapping[str, Any]) -> str | None:
    """`store`, `product`, `company`, `insight:<TYPE>`, or None for an item of no known kind."""
    sort_key = str(item.get("GSI1SK") or "")
    if sort_key.startswith("STORE#"):
        return "store"
    if sort_key.startswith("PRODUCT#"):
        return "product"
    if sort_key == "COMPANY":
        return "company"
    if sort_key.startswith("INSIGHT#"):
        return f"insight:{sort_key.split('#')[1]}" if sort_key.count("#") >= 2 else None
    return None


def coerce(value: Any, json_type: str) -> tuple[Any, str | None]:
    """The value as the declared JSON type, or None and why not."""
    if value is None:
        return None, "missing"
    if json_type == "string":
        if isinstance(value, str):
            return value, None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), None
        return None, f"{type(value).__name__} where a string belongs"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"{type(value).__name__} where a number belongs"
    if json_type == "integer":
        if isinstance(value, int):
            return value, None
        if value.is_integer():
            return int(value), None
        return None, "fraction where an integer belongs"
    return value, None


@dataclass
class DatasetBuild:
    records: list[dict[str, Any]]
    source_items: int
    duplicates: int = 0
    nulls: Counter[str] = field(default_factory=Counter)


def build_dataset(spec: DatasetSpec, items: Iterable[Mapping[str, Any]], date: str) -> DatasetBuild:
    """Flat records of one dataset for one day: declared fields, declared types, deterministic order."""
    candidates = [item for item in items if item_kind(item) == spec.source]
    nulls: Counter[str] = Counter()
    seen: set[Any] = set()
    records = []
    duplicates = 0
    # Sorting by the full item text first makes "which duplicate wins" independent of query order.
    for item in sorted(
        candidates, key=lambda i: (str(i.get(spec.identity)), repr(sorted(i.items())))
    ):
        identity = item.get(spec.identity)
        if identity in seen:
            duplicates += 1
            continue
        seen.add(identity)
        record: dict[str, Any] = {"date": date}
        for name, json_type in spec.fields:
            if name == "rank":
                continue
            value, problem = coerce(item.get(name), json_type)
            if problem is not None:
                nulls[f"{name}: {problem}"] += 1
            record[name] = value
        records.append(record)

    if spec.order_by:
        key = spec.order_by
        records.sort(key=lambda r: (r[key] is None, -(r[key] or 0), str(r[spec.identity])))
    if spec.limit is not None:
        records = records[: spec.limit]
    if "rank" in dict(spec.fields):
        for rank, record in enumerate(records, start=1):
            record["rank"] = rank
    ordered = [{name: record.get(name) for name in spec.field_names} for record in records]
    return DatasetBuild(ordered, len(candidates), duplicates, nulls)


def unknown_kinds(items: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Items no dataset or summary reads, by their GSI1SK prefix."""
    known = {"store", "product", "company", *(f"insight:{t}" for t in INSIGHT_TYPES)}
    counts: Counter[str] = Counter()
    for item in items:
        kind = item_kind(item)
        if kind not in known:
            counts[str(item.get("GSI1SK") or "<no GSI1SK>").rsplit("#", 1)[0]] += 1
    return counts


def manifest(dataset_prefix_uri: str) -> dict[str, Any]:
    """QuickSight's S3 manifest for every NDJSON file under one dataset prefix."""
    return {
        "fileLocations": [{"URIPrefixes": [dataset_prefix_uri]}],
        "globalUploadSettings": {"format": "JSON"},
    }
