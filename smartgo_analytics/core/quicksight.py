"""The six QuickSight datasets: one spec table, one builder, one manifest format.

QuickSight gives each field one type and skips a row whose value does not fit it, so every field
has one JSON type on every line: a `number` is always a JSON float (`23187.0`), an `integer` always
an integer, a `string` always a string; a value that cannot be had is null. A manifest may name at
most 1,000 files: each finished month is read from one file per dataset, the current month from its
daily files, which keeps a dataset to about 150 files in ten years.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smartgo_analytics.core.ndjson import binary_text

INSIGHT_TYPES = ("ANOMALY", "TREND", "RECOMMENDATION")
DAILY_METRICS = "dynamodb_daily_metrics"  # the asset whose records five of the datasets are made of
MANIFEST_FILE_LIMIT = 1_000  # QuickSight's limit of files per manifest
JSON_TYPES = {"string": (str,), "integer": (int,), "number": (float,)}
# QuickSight's INTEGER is a signed 64-bit integer: a larger value would skip its row.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str | None  # the item kind it is built from (see `item_kind`); None: every record
    identity: str  # the field that makes a record unique within a day
    fields: tuple[tuple[str, str], ...]  # (name, JSON type), `date` excluded
    order_by: str | None = None  # a numeric field, descending
    limit: int | None = None
    description: str = ""
    staged_by: str = (
        DAILY_METRICS  # the asset that stages the day's records (layout.staged_records_key)
    )

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
    DatasetSpec(
        name="price_bands",
        source=None,
        identity="band_id",
        staged_by="price_bands",
        description="What sold items of a kind went for over the 90 days ending with the day",
        fields=(
            ("band_id", "string"),
            ("level", "string"),
            ("tenant_id", "string"),
            ("category", "string"),
            ("brand", "string"),
            ("condition", "string"),
            ("sales_count", "integer"),
            ("p10", "number"),
            ("p25", "number"),
            ("median", "number"),
            ("p75", "number"),
            ("p90", "number"),
            ("mean", "number"),
            ("window_start", "string"),
            ("window_end", "string"),
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
        if (text := binary_text(value)) is not None:
            return text, None
        return None, f"{type(value).__name__} where a string belongs"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"{type(value).__name__} where a number belongs"
    if json_type == "integer":
        if isinstance(value, float):
            if not value.is_integer():
                return None, "fraction where an integer belongs"
            value = int(value)
        if not INT64_MIN <= value <= INT64_MAX:
            return None, "integer outside the signed 64-bit range"
        return value, None
    try:
        return float(value), None
    except OverflowError:
        return None, "number too large for a float"


def type_problems(spec: DatasetSpec, records: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Values, as read back from a file, whose JSON type is not their field's declared one."""
    declared = {"date": "string", **dict(spec.fields)}
    problems: Counter[str] = Counter()
    for record in records:
        for name, value in record.items():
            json_type = declared.get(name)
            if value is None or json_type is None:
                continue
            if isinstance(value, bool) or not isinstance(value, JSON_TYPES[json_type]):
                problems[f"{name}: {type(value).__name__} where {json_type} is declared"] += 1
    return problems


@dataclass
class DatasetBuild:
    records: list[dict[str, Any]]
    source_items: int
    duplicates: int = 0
    nulls: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # items without a usable identity


def identity_problem(value: Any) -> str | None:
    """Why a record's identity (store, product or insight id) cannot tell records apart, or None:
    it must be a non-blank string or a whole number."""
    if value is None:
        return "missing"
    if isinstance(value, str):
        return None if value.strip() else "blank"
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    kind = "binary value" if binary_text(value) is not None else type(value).__name__
    return f"a {kind}, not a string or whole number"


def of_kind(spec: DatasetSpec, item: Mapping[str, Any]) -> bool:
    return spec.source is None or item_kind(item) == spec.source


def usable_items(spec: DatasetSpec, items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The items of the dataset's kind whose identity can be used."""
    return [
        item
        for item in items
        if of_kind(spec, item) and identity_problem(item.get(spec.identity)) is None
    ]


def build_dataset(spec: DatasetSpec, items: Iterable[Mapping[str, Any]], date: str) -> DatasetBuild:
    """Flat records of one dataset for one day: declared fields, declared types, deterministic order.
    An item whose identity is unusable is skipped, counted by reason."""
    items = list(items)
    candidates = usable_items(spec, items)
    skipped: Counter[str] = Counter(
        f"{spec.identity}: {identity_problem(item.get(spec.identity))}"
        for item in items
        if of_kind(spec, item) and identity_problem(item.get(spec.identity))
    )
    nulls: Counter[str] = Counter()
    seen: set[Any] = set()
    records = []
    duplicates = 0
    # Sorting by the full item text first makes "which duplicate wins" independent of query order.
    for item in sorted(
        candidates, key=lambda i: (str(i.get(spec.identity)), repr(sorted(i.items())))
    ):
        identity = str(item.get(spec.identity))
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
    return DatasetBuild(ordered, len(candidates) + skipped.total(), duplicates, nulls, skipped)


def unknown_kinds(items: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Items no dataset or summary reads, by their GSI1SK prefix."""
    known = {"store", "product", "company", *(f"insight:{t}" for t in INSIGHT_TYPES)}
    counts: Counter[str] = Counter()
    for item in items:
        kind = item_kind(item)
        if kind not in known:
            counts[str(item.get("GSI1SK") or "<no GSI1SK>").rsplit("#", 1)[0]] += 1
    return counts


@dataclass(frozen=True)
class ManifestPlan:
    """Which finished months to write again from their days, and the files the manifest names:
    ("month", "2025-01") or ("day", "2025-02-03"), oldest first."""

    months_to_write: list[str]
    months_to_remove: list[str]
    files: list[tuple[str, str]]


def plan_manifest(
    days_with_files: Iterable[str],
    months_with_files: Iterable[str],
    exported_days: Iterable[str],
    current_month: str,
) -> ManifestPlan:
    """A month before `current_month` (YYYY-MM) is finished: it is read from one file, written
    again when one of its days was exported, or when it has days but no file yet. A month file with
    no days left, or of a month not finished, is removed."""
    days = set(days_with_files)
    month_files = set(months_with_files)
    finished = {day[:7] for day in days if day[:7] < current_month}
    touched = {day[:7] for day in exported_days if day[:7] < current_month}
    to_write = (touched & finished) | (finished - month_files)
    files = [("month", m) for m in sorted(finished)]
    files += [("day", d) for d in sorted(days) if d[:7] >= current_month]
    if len(files) > MANIFEST_FILE_LIMIT:
        raise ValueError(
            f"{len(files)} files for one manifest, QuickSight reads at most {MANIFEST_FILE_LIMIT}"
        )
    return ManifestPlan(sorted(to_write), sorted(month_files - finished), files)


def manifest(uris: list[str]) -> dict[str, Any]:
    """QuickSight's S3 manifest naming each file."""
    return {
        "fileLocations": [{"URIs": uris}],
        "globalUploadSettings": {"format": "JSON"},
    }
