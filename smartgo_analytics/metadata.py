"""Small Markdown for the Dagster UI, and Dagster's standard table keys (the catalog's columns,
row counts and locations)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from dagster import MetadataValue, TableColumn, TableColumnConstraints, TableSchema


def md_table(rows: list[dict], columns: list[str], limit: int = 5) -> MetadataValue:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        lines.append(
            "| " + " | ".join(str(row.get(c, ""))[:60].replace("|", "/") for c in columns) + " |"
        )
    return MetadataValue.md("\n".join(lines))


def reasons(counts: Counter[str], limit: int = 5) -> MetadataValue:
    """A Markdown list of the most common reasons with their counts, or plain "none"."""
    if not counts:
        return MetadataValue.text("none")
    return MetadataValue.md(
        "\n".join(f"- {reason}: {count}" for reason, count in counts.most_common(limit))
    )


def location(uri: str) -> MetadataValue:
    """A URI the UI shows as a link (s3://, http) or as a path to copy (file://)."""
    if uri.startswith("file://"):
        return MetadataValue.path(uri.removeprefix("file://"))
    return MetadataValue.url(uri)


def table_metadata(
    table_name: str,
    uri: str | None,
    columns: Iterable[TableColumn],
    partition_rows: int,
    rows: int | None = None,
) -> dict[str, object]:
    """Dagster's standard keys for a table's materialisation: its columns, rows (of the day, and
    of the whole table when known), name and location (None: nothing written); the asset pages
    and the catalog show them."""
    metadata: dict[str, object] = {
        "dagster/column_schema": MetadataValue.table_schema(TableSchema(columns=list(columns))),
        "dagster/table_name": table_name,
        "dagster/partition_row_count": MetadataValue.int(partition_rows),
    }
    if uri is not None:
        metadata["dagster/uri"] = uri
    if rows is not None:
        metadata["dagster/row_count"] = MetadataValue.int(rows)
    return metadata


def iceberg_columns(schema, descriptions: Mapping[str, str]) -> list[TableColumn]:
    """An Iceberg schema's top-level columns with their types, whether they take nulls, and their
    descriptions (the field's own doc, else `descriptions`)."""
    return [
        TableColumn(
            name=field.name,
            type=str(field.field_type),
            description=field.doc or descriptions.get(field.name),
            constraints=TableColumnConstraints(nullable=not field.required),
        )
        for field in schema.fields
    ]


def snapshot_rows(table) -> int | None:
    """The table's rows at its current snapshot, from the snapshot's summary (no file is read)."""
    snapshot = table.current_snapshot()
    summary = snapshot.summary if snapshot else None
    total = summary.get("total-records") if summary is not None else None
    return int(total) if total is not None else None
