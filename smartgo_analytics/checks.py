"""Asset checks: their specs, and how each turns figures into a result."""

from __future__ import annotations

import warnings
from collections import Counter

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, MetadataValue

from smartgo_analytics.metadata import reasons as reason_list
from smartgo_analytics.partitions import daily_partitions

# Every check is partitioned like its asset: each result names its day (a Dagster preview feature,
# which says so at each spec).
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
SALES = AssetKey("smartgo_sales")
EMBEDDINGS = AssetKey("product_image_embeddings")
ICEBERG = AssetKey("smartgo_sales_iceberg")

no_quarantined_rows = AssetCheckSpec(
    "no_quarantined_rows",
    asset=SALES,
    partitions_def=daily_partitions,
    description="Source rows that could not be used (WARN when any)",
)
source_honours_filters = AssetCheckSpec(
    "source_honours_filters",
    asset=SALES,
    partitions_def=daily_partitions,
    description="The source gave no row outside the day's window or of another tenant than "
    "TENANT (such rows are quarantined, never kept; ERROR when any: the source ignores a filter)",
)
embedding_error_ratio = AssetCheckSpec(
    "embedding_error_ratio_within_budget",
    asset=EMBEDDINGS,
    partitions_def=daily_partitions,
    blocking=True,
    description="Share of sales without a vector stays within MAX_EMBEDDING_ERROR_RATIO; blocks the Iceberg write",
)
vector_length = AssetCheckSpec(
    "vectors_have_configured_length",
    asset=EMBEDDINGS,
    partitions_def=daily_partitions,
    description="Every non-null vector has the configured length",
)
iceberg_reconciles = AssetCheckSpec(
    "iceberg_rows_match_source",
    asset=ICEBERG,
    partitions_def=daily_partitions,
    description="The day's Iceberg rows equal the day's valid source rows",
)


price_bands_hold = AssetCheckSpec(
    "bands_hold_together",
    asset="price_bands",
    partitions_def=daily_partitions,
    description="Every price band has at least one sale and p10 <= median <= p90",
)


def price_bands_result(problems: list[str], bands: int) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=price_bands_hold.name,
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description=f"{len(problems)} of {bands} bands break their rules",
        metadata={
            "bands": bands,
            "broken": len(problems),
            "examples": MetadataValue.md("\n".join(f"- {p}" for p in problems[:5]) or "none"),
        },
    )


index_matches_table = AssetCheckSpec(
    "index_matches_table",
    asset="similarity_index",
    partitions_def=daily_partitions,
    description="For each tenant, the index holds as many vectors of the day as the table's rows with one",
)
embeddings_look_right = AssetCheckSpec(
    "embeddings_look_right",
    asset="embedding_quality",
    partitions_def=daily_partitions,
    description="Neighbour agreement, drift and duplicate vectors within their thresholds (WARN)",
)


shadow_model_no_worse = AssetCheckSpec(
    "shadow_model_no_worse",
    asset="similarity_index",
    partitions_def=daily_partitions,
    description="With SHADOW_EMBEDDING_MODEL set: the shadow model's comparables price the day's "
    "sales no worse than the serving model's (WARN); without one, passed and says so",
)


def shadow_result(figures: dict | None, tolerance: float) -> AssetCheckResult:
    if figures is None:
        return AssetCheckResult(
            check_name=shadow_model_no_worse.name,
            asset_key=shadow_model_no_worse.asset_key,
            passed=True,
            description="no shadow model (SHADOW_EMBEDDING_MODEL is not set)",
        )
    mine, theirs = figures["price_error_current"], figures["price_error_other"]
    priced = mine is not None and theirs is not None
    passed = not priced or theirs <= mine * tolerance
    return AssetCheckResult(
        check_name=shadow_model_no_worse.name,
        asset_key=shadow_model_no_worse.asset_key,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"price error {theirs:.1%} (shadow) against {mine:.1%} (serving) over "
            f"{figures['held_out_sales_priced']} sales; neighbour agreement "
            f"{figures['neighbour_agreement']}"
            if priced
            else "no sale of the day had earlier sales in both indexes to be priced from"
        ),
        metadata={k: v for k, v in figures.items() if v is not None},
    )


def index_result(differences: list[str], day_vectors: int, tenants: int) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=index_matches_table.name,
        asset_key=index_matches_table.asset_key,
        passed=not differences,
        severity=AssetCheckSeverity.ERROR,
        description=f"{len(differences)} tenant(s) differ from the table on the day"
        if differences
        else f"the day's {day_vectors} vectors of {tenants} tenant(s) match the table",
        metadata={
            "day_vectors": day_vectors,
            "tenants_differing": len(differences),
            "differences": MetadataValue.md(
                "\n".join(f"- {d}" for d in differences[:10]) or "none"
            ),
        },
    )


def quality_result(problems: list[str], figures: dict, thresholds) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=embeddings_look_right.name,
        asset_key=embeddings_look_right.asset_key,
        passed=not problems,
        severity=AssetCheckSeverity.WARN,
        description="; ".join(problems) or "within thresholds",
        metadata={
            **figures,
            "min_neighbour_agreement": thresholds.min_neighbour_agreement,
            "max_drift": thresholds.max_drift,
            "max_duplicate_share": thresholds.max_duplicate_share,
        },
    )


def quarantine_result(quarantined: int, total: int, reasons: Counter[str]) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=no_quarantined_rows.name,
        passed=quarantined == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "quarantined": quarantined,
            "source_rows": total,
            "reasons": reason_list(reasons),
        },
    )


def filters_result(outside_window: int, other_tenants: int, source: str) -> AssetCheckResult:
    ignored = [
        f"{count} rows {what}"
        for count, what in (
            (outside_window, "outside the window"),
            (other_tenants, "of another tenant"),
        )
        if count
    ]
    return AssetCheckResult(
        check_name=source_honours_filters.name,
        passed=not ignored,
        severity=AssetCheckSeverity.ERROR,
        description=f"the {source} source gave {' and '.join(ignored)}: quarantined"
        if ignored
        else f"the {source} source kept to the window and the tenant",
        metadata={"rows_outside_window": outside_window, "rows_of_other_tenants": other_tenants},
    )


def error_ratio_result(
    errors: int, total: int, budget: float, reasons: Counter[str]
) -> AssetCheckResult:
    ratio = errors / total if total else 0.0
    return AssetCheckResult(
        check_name=embedding_error_ratio.name,
        passed=ratio <= budget,
        severity=AssetCheckSeverity.ERROR,
        description=f"{errors} of {total} sales have no vector ({ratio:.1%}, budget {budget:.1%})",
        metadata={
            "errors": errors,
            "sales": total,
            "error_ratio": ratio,
            "budget": budget,
            "reasons": reason_list(reasons),
        },
    )


def vector_length_result(lengths: Counter[int], expected: int) -> AssetCheckResult:
    wrong = sum(count for length, count in lengths.items() if length != expected)
    return AssetCheckResult(
        check_name=vector_length.name,
        passed=wrong == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "expected_length": expected,
            "wrong_length": wrong,
            "vectors": sum(lengths.values()),
        },
    )


def reconciliation_result(iceberg_rows: int, source_rows: int) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=iceberg_reconciles.name,
        passed=iceberg_rows == source_rows,
        severity=AssetCheckSeverity.ERROR,
        metadata={"iceberg_rows": iceberg_rows, "valid_source_rows": source_rows},
    )


def file_matches_source_spec(asset: AssetKey) -> AssetCheckSpec:
    # One check, not two: a run of many days records a result per day, and each is an event the
    # instance stores one by one (a year's backfill of five datasets: 1,825 of them).
    return AssetCheckSpec(
        "file_matches_source",
        asset=asset,
        partitions_def=daily_partitions,
        description="The day's file parses as NDJSON with the declared fields, in order and of the "
        "declared JSON types, and holds one record per distinct source item",
    )
