"""What the QuickSight assets do between reading their inputs and reporting: a day's SalesData
staged, a dataset's day exported and read back, its month files and manifest written."""

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from dagster import AssetCheckEvaluation, AssetKey, MetadataValue, TableColumn

from smartgo_analytics.core.ndjson import decode_ndjson, encode_ndjson, plain_value
from smartgo_analytics.core.quicksight import (
    DatasetSpec,
    build_dataset,
    item_kind,
    manifest,
    plan_manifest,
    type_problems,
    unknown_kinds,
    usable_items,
)
from smartgo_analytics.core.retry import retry_until
from smartgo_analytics.layout import (
    daily_metrics_key,
    quicksight_dataset_prefix,
    quicksight_export_key,
    quicksight_manifest_key,
    quicksight_month_key,
    quicksight_month_prefix,
    staged_records_key,
)
from smartgo_analytics.metadata import location, md_table, table_metadata
from smartgo_analytics.metadata import reasons as reason_list
from smartgo_analytics.resources.dynamodb import SalesDataTable
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.resources.quicksight import QuickSightExport, ingestion_id

DAY_QUERIES_IN_FLIGHT = 8
PER_DAY_COLUMNS = ["date", "items", "pages", "non_finite_numbers"]
NDJSON = "application/x-ndjson"
DAY_FILE = re.compile(r"(\d{4}-\d{2}-\d{2})\.json")
MONTH_FILE = re.compile(r"(\d{4}-\d{2})\.json")


def export_day(day: str, sales_data: SalesDataTable, object_store: ObjectStore, log) -> dict:
    """A day's SalesData items staged as NDJSON; its figures."""
    items: list[dict] = []
    nulls: Counter[str] = Counter()
    pages = 0
    for page in sales_data.query_day(day):
        pages += 1
        for item in page:
            plain, nulled = plain_value(item)
            items.append(plain)
            nulls.update(nulled)
    object_store.put_bytes(daily_metrics_key(day), encode_ndjson(items), NDJSON)
    unknown = unknown_kinds(items)
    if unknown:
        log.warning(f"{day}: items of no known kind, not exported: {dict(unknown)}")
    kinds = Counter(item_kind(item) or "unknown" for item in items)
    return {
        "date": day,
        "items": len(items),
        "pages": pages,
        "non_finite_numbers": sum(nulls.values()),
        **{kind: count for kind, count in sorted(kinds.items())},
    }


def metrics_metadata(per_day: list[dict], table_name: str) -> dict:
    """The run's figures, and a single day's own when the run holds one day."""
    day_figures = (
        {
            "items": per_day[0]["items"],
            "pages_read": per_day[0]["pages"],
            "dagster/partition_row_count": per_day[0]["items"],
        }
        if len(per_day) == 1
        else {}
    )
    return {
        **day_figures,
        "days_in_run": len(per_day),
        "items_in_run": sum(d["items"] for d in per_day),
        "pages_read_in_run": sum(d["pages"] for d in per_day),
        "non_finite_numbers_nulled_in_run": sum(d["non_finite_numbers"] for d in per_day),
        "table": table_name,
        "dagster/table_name": f"dynamodb.{table_name}",
        "per_day": md_table(
            per_day,
            [*PER_DAY_COLUMNS, *sorted({k for d in per_day for k in d} - set(PER_DAY_COLUMNS))],
            31,
        ),
    }


@dataclass(frozen=True)
class DayExport:
    """A dataset's day as written and read back: what its file holds against what it should."""

    exported: int
    expected: int
    problems: list[str]
    metadata: dict


def export_dataset_day(
    spec: DatasetSpec, day: str, object_store: ObjectStore, prefix: str
) -> DayExport:
    """The day's file of the dataset from its staged records (none for a day without records),
    read back and judged: the checks judge the file, not the intention."""
    items = decode_ndjson(object_store.get_bytes(staged_records_key(spec.staged_by, day)))
    build = build_dataset(spec, items, day)
    file_key = quicksight_export_key(prefix, spec.name, day)
    if build.records:
        file_uri = object_store.put_bytes(
            file_key, encode_ndjson(build.records, spec.field_names), NDJSON
        )
        uri: MetadataValue | str = location(file_uri)
    else:  # an empty day has no file (QuickSight reads no empty file); nothing to show
        object_store.delete(file_key)
        file_uri, uri = None, "none (no records)"
    distinct = len({str(item.get(spec.identity)) for item in usable_items(spec, items)})
    expected = min(distinct, spec.limit) if spec.limit is not None else distinct
    problems = []
    try:
        written = decode_ndjson(object_store.get_bytes(file_key)) if build.records else []
    except ValueError as error:
        problems.append(str(error))
        written = []
    bad_fields = [r for r in written if list(r) != list(spec.field_names)]
    if bad_fields:
        problems.append(f"{len(bad_fields)} lines without the declared fields in order")
    problems += [f"{p} ({n} lines)" for p, n in type_problems(spec, written).items()]
    if len(written) != expected:
        problems.append(f"{len(written)} records exported, {expected} expected")
    metadata = {
        "s3_uri": uri,
        "records_exported": len(written),
        "fields_nulled": reason_list(build.nulls, 10),
        "duplicates_skipped": build.duplicates,
        "items_without_identity": build.skipped.total(),
        "items_without_identity_reasons": reason_list(build.skipped, 10),
        "preview": md_table(build.records, list(spec.field_names)),
        **table_metadata(f"quicksight.{spec.name}", file_uri, dataset_columns(spec), len(written)),
    }
    return DayExport(len(written), expected, problems, metadata)


def file_check_evaluation(
    key: AssetKey, check_name: str, day: str, export: DayExport
) -> AssetCheckEvaluation:
    problems = export.problems
    return AssetCheckEvaluation(
        asset_key=key,
        check_name=check_name,
        passed=not problems,
        partition=day,
        description="; ".join(problems[:3]) or f"{export.exported} records as declared",
        metadata={
            "exported": export.exported,
            "expected": export.expected,
            "problems": MetadataValue.md("\n".join(problems[:10])) if problems else "none",
        },
    )


def refreshed(
    quicksight: QuickSightExport, spec: DatasetSpec, days: list[str], run_id: str, passed: bool
) -> dict:
    """A SPICE refresh of the dataset's data set, when configured and every file passed its check
    (a file that failed is not refreshed into SPICE): its id and status."""
    if not passed:
        return {}
    refresh = quicksight.refresh(spec.name, ingestion_id(spec.name, days[0], days[-1], run_id))
    if refresh is None:
        return {}
    return {
        "spice_ingestion_id": refresh["ingestion_id"],
        "spice_ingestion_status": refresh["status"],
        "spice_data_set_id": refresh["data_set_id"],
    }


def dataset_columns(spec: DatasetSpec) -> list[TableColumn]:
    """A dataset's fields as its files hold them: JSON types, as QuickSight's manifest reads them."""
    declared = {"date": "string", **dict(spec.fields)}
    return [TableColumn(name=name, type=declared[name]) for name in spec.field_names]


def write_manifest(
    object_store: ObjectStore, prefix: str, dataset: str, exported_days: list[str]
) -> tuple[str | None, int]:
    """Write again the finished months the export touched, then the manifest naming a file per
    finished month and per day of the current one: its URI (None when there is no file to name:
    QuickSight refuses an empty manifest) and how many files it names.

    Another run may export days of the same dataset meanwhile. Both are made from a listing of the
    day files, and that listing is read again after they are written: when a day file came, went or
    changed since, they are made again. So the last writer of a month file or manifest wrote it
    from the day files as they are, and a day is never lost from them."""
    day_prefix = quicksight_dataset_prefix(prefix, dataset)

    def attempt(_: int) -> tuple[str | None, int] | None:
        days = object_store.versions(day_prefix)
        try:
            written = _write_months_and_manifest(
                object_store,
                prefix,
                dataset,
                exported_days,
                _dated(list(days), day_prefix, DAY_FILE),
            )
        except FileNotFoundError:  # a day file removed since the listing (its day became empty)
            return None
        return written if object_store.versions(day_prefix) == days else None

    return retry_until(
        attempt,
        attempts=MANIFEST_ATTEMPTS,
        base_s=0.05,
        cap_s=1.0,
        gave_up=f"{dataset}: its day files kept changing while its month files and manifest "
        "were written",
    )


MANIFEST_ATTEMPTS = 20


def _write_months_and_manifest(
    object_store: ObjectStore, prefix: str, dataset: str, exported_days: list[str], days: set[str]
) -> tuple[str | None, int]:
    month_prefix = quicksight_month_prefix(prefix, dataset)
    months = _dated(object_store.list_keys(month_prefix), month_prefix, MONTH_FILE)
    plan = plan_manifest(days, months, exported_days, datetime.now(UTC).strftime("%Y-%m"))
    for month in plan.months_to_write:
        lines = b"".join(
            object_store.get_bytes(quicksight_export_key(prefix, dataset, day))
            for day in sorted(days)
            if day.startswith(month)
        )
        object_store.put_bytes(quicksight_month_key(prefix, dataset, month), lines, NDJSON)
    for month in plan.months_to_remove:
        object_store.delete(quicksight_month_key(prefix, dataset, month))
    manifest_key = quicksight_manifest_key(prefix, dataset)
    if not plan.files:
        object_store.delete(manifest_key)
        return None, 0
    uris = [
        object_store.uri(
            quicksight_month_key(prefix, dataset, when)
            if kind == "month"
            else quicksight_export_key(prefix, dataset, when)
        )
        for kind, when in plan.files
    ]
    body = json.dumps(manifest(uris), indent=2).encode()
    return object_store.put_bytes(manifest_key, body, "application/json"), len(uris)


def _dated(keys: list[str], prefix: str, name: re.Pattern) -> set[str]:
    """The dates named by the files directly under the prefix."""
    return {m.group(1) for key in keys if (m := name.fullmatch(key.removeprefix(prefix)))}
