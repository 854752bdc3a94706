"""Small Markdown for the Dagster UI."""

from __future__ import annotations

from dagster import MetadataValue


def md_table(rows: list[dict], columns: list[str], limit: int = 5) -> MetadataValue:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        lines.append(
            "| " + " | ".join(str(row.get(c, ""))[:60].replace("|", "/") for c in columns) + " |"
        )
    return MetadataValue.md("\n".join(lines))
