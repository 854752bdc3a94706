"""Small Markdown for the Dagster UI."""

from __future__ import annotations

from collections import Counter

from dagster import MetadataValue


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
