"""Validation of SmartGo source rows and the calendar facts derived from a sale."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

SOURCE_COLUMNS = (
    "id",
    "tenant_id",
    "category",
    "brand",
    "condition",
    "sold_price",
    "sold_date",
    "image_url",
    "description",
)

# A price above this is a data-entry error (a barcode typed into the price field), not a sale.
MAX_PLAUSIBLE_PRICE = Decimal("1000000")

# Identifiers become parts of object keys and partition paths, so they are data with a fixed alphabet:
# ASCII letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters,
# exactly as the source holds them (no trimming: ' acme' is not 'acme').
VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# The prices accepted, in one place: a number from the database (numeric as Decimal, an integer, a
# finite float), or text holding a plain decimal: digits with at most one '.', an optional sign,
# surrounding spaces allowed. Nothing else: no digit separators ('1_000', '1,000'), exponents,
# currency signs, hexadecimal or Python-only spellings ('Infinity', '١٢').
PRICE_TEXT = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*", re.ASCII)

VALID_SALES_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("tenant_id", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("condition", pa.string()),
        pa.field("sold_price", pa.float64(), nullable=False),
        pa.field("sold_date", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("image_url", pa.string(), nullable=False),
        pa.field("description", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [pa.field("product_id", pa.string()), pa.field("reason", pa.string(), nullable=False)]
)

_NORTHERN_SEASONS = {
    12: "winter",
    1: "winter",
    2: "winter",
    3: "spring",
    4: "spring",
    5: "spring",
    6: "summer",
    7: "summer",
    8: "summer",
    9: "autumn",
    10: "autumn",
    11: "autumn",
}
_OPPOSITE = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}


def season_of(month: int, hemisphere: str = "northern") -> str:
    """Meteorological season of a calendar month."""
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1..12, got {month}")
    season = _NORTHERN_SEASONS[month]
    if hemisphere == "northern":
        return season
    if hemisphere == "southern":
        return _OPPOSITE[season]
    raise ValueError(f"hemisphere must be 'northern' or 'southern', got {hemisphere!r}")


def quarter_of(month: int) -> str:
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1..12, got {month}")
    return f"Q{(month - 1) // 3 + 1}"


@dataclass(frozen=True)
class Rejected:
    product_id: str | None
    reason: str


# What a source was asked to filter and did not: the row is checked, never assumed filtered.
OUTSIDE_WINDOW = "sold outside the day's window (the source did not filter it)"
OTHER_TENANT = "tenant_id other than TENANT (the source did not filter it)"
TEXT_COLUMNS = ("category", "brand", "condition", "image_url", "description")


def _text(value: str | None) -> str | None:
    """Text as the source holds it (any Unicode kept as is); None for a missing or blank value."""
    return value if value is not None and value.strip() else None


def _printable(value: Any, limit: int) -> str:
    """A value as text that can be stored and shown, whatever it held (a lone surrogate escaped)."""
    return str(value)[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def text_problem(name: str, value: Any) -> str | None:
    """Why the value cannot be a text column (not text, or not valid Unicode), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{name} is a {type(value).__name__}, not text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid Unicode (a lone surrogate)"
    return None


def identifier_problem(name: str, value: Any) -> str | None:
    """Why the value cannot be an identifier (see VALID_ID), or None when it can."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing {name}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"{name} is a {type(value).__name__}, not an identifier"
    if isinstance(value, int) and value.bit_length() > 400:
        return f"{name} is a {value.bit_length()}-bit integer, not an identifier"
    if not VALID_ID.fullmatch(str(value)):
        return f"{name} {_printable(value, 40)!r} is not an identifier (A-Z a-z 0-9 . _ -, at most 128)"
    return None


def parse_price(raw: Any) -> Decimal | str:
    """The price as a Decimal, or why it is not one (see PRICE_TEXT for what is accepted)."""
    if raw is None:
        return "null sold_price"
    if isinstance(raw, bool):
        return "unparseable sold_price: a boolean"
    if isinstance(raw, float) and not math.isfinite(raw):
        return "non-finite sold_price"
    if isinstance(raw, str):
        if len(raw) > 64 or not PRICE_TEXT.fullmatch(raw):
            return f"unparseable sold_price {_printable(raw, 40)!r}"
        raw = raw.strip()
    elif isinstance(raw, int) and raw.bit_length() > 64:
        return f"implausible sold_price above {MAX_PLAUSIBLE_PRICE}"
    elif not isinstance(raw, (int, float, Decimal)):
        return f"unparseable sold_price: a {type(raw).__name__}"
    try:
        price = Decimal(raw) if not isinstance(raw, float) else Decimal(repr(raw))
    except (InvalidOperation, ValueError):
        return f"unparseable sold_price {_printable(raw, 40)!r}"
    if not price.is_finite():
        return "non-finite sold_price"
    if price < 0:
        return "negative sold_price"
    if price > MAX_PLAUSIBLE_PRICE:
        return f"implausible sold_price above {MAX_PLAUSIBLE_PRICE}"
    return price


def sold_at(raw: Any) -> datetime | str:
    """The sold time in UTC, or why it is not one."""
    if not isinstance(raw, datetime):
        return "unparseable sold_date"
    if raw.tzinfo is None:
        return "sold_date without time zone"
    try:
        return raw.astimezone(UTC)
    except (OverflowError, ValueError):  # year 1 east of UTC, year 9999 west of it
        return "sold_date out of range"


def validate_sale(
    row: dict[str, Any],
    window: tuple[datetime, datetime] | None = None,
    tenant: str | None = None,
) -> dict[str, Any] | Rejected:
    """Return the sale as a clean record, or why it cannot be used. With `window` ([start, end))
    and `tenant`, a sale sold outside the window or of another tenant is rejected too: what the
    source was asked to filter is checked here, whatever the source did."""
    raw_id = row.get("id")
    if problem := identifier_problem("product id", raw_id):
        # The id is kept in the quarantine record as text, whatever it was: it is data there.
        return Rejected(None if raw_id is None else _printable(raw_id, 200), problem)
    product_id = str(raw_id)
    if problem := identifier_problem("tenant_id", row.get("tenant_id")):
        return Rejected(product_id, problem)
    tenant_id = str(row["tenant_id"])
    if tenant is not None and tenant_id != tenant:
        return Rejected(product_id, OTHER_TENANT)

    price = parse_price(row.get("sold_price"))
    if isinstance(price, str):
        return Rejected(product_id, price)

    sold_date = sold_at(row.get("sold_date"))
    if isinstance(sold_date, str):
        return Rejected(product_id, sold_date)
    if window is not None and not window[0] <= sold_date < window[1]:
        return Rejected(product_id, OUTSIDE_WINDOW)

    for name in TEXT_COLUMNS:
        if problem := text_problem(name, row.get(name)):
            return Rejected(product_id, problem)
    image_url = (_text(row.get("image_url")) or "").strip() or None
    if image_url is None:
        return Rejected(product_id, "missing image_url")

    return {
        "product_id": product_id,
        "tenant_id": tenant_id,
        "category": _text(row.get("category")),
        "brand": _text(row.get("brand")),
        "condition": _text(row.get("condition")),
        "sold_price": float(price),
        "sold_date": sold_date,
        "image_url": image_url,
        "description": row.get("description"),
    }


DUPLICATE_REASON = "duplicate product id: its latest sale of the day is kept"


def keep_latest_sale(sales: pa.Table) -> tuple[pa.Table, list[Rejected]]:
    """One row per product id: the latest `sold_date` wins (on a tie, the row read last). The
    others are returned as rejected, to be quarantined with the reason."""
    counts = pc.value_counts(sales.column("product_id"))
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return sales, []
    is_repeated = pc.is_in(sales.column("product_id"), value_set=repeated).to_pylist()
    latest: dict[str, tuple[datetime, int]] = {}
    ids, dates = sales.column("product_id").to_pylist(), sales.column("sold_date").to_pylist()
    for index in (i for i, flag in enumerate(is_repeated) if flag):
        if ids[index] not in latest or dates[index] >= latest[ids[index]][0]:
            latest[ids[index]] = (dates[index], index)
    winners = {index for _, index in latest.values()}
    keep = [not flag or i in winners for i, flag in enumerate(is_repeated)]
    rejected = [Rejected(ids[i], DUPLICATE_REASON) for i, k in enumerate(keep) if not k]
    return sales.filter(pa.array(keep)), rejected


def validated_day(
    row_batches: Iterable[list[dict[str, Any]]],
    window: tuple[datetime, datetime] | None = None,
    tenant: str | None = None,
) -> tuple[pa.Table, list[Rejected]]:
    """A day's source rows, batch by batch, as one table of valid sales (the latest per product
    id) and the rejected rows with their reasons (`validate_sale`, with the asked window and
    tenant). Each batch becomes Arrow as it comes: a big day never sits in memory as Python
    objects."""
    batches, rejected = [], []
    for rows in row_batches:
        valid = []
        for row in rows:
            outcome = validate_sale(row, window, tenant)
            if isinstance(outcome, Rejected):
                rejected.append(outcome)
            else:
                valid.append(outcome)
        batches.append(pa.RecordBatch.from_pylist(valid, schema=VALID_SALES_SCHEMA))
    table = pa.Table.from_batches(batches, schema=VALID_SALES_SCHEMA).combine_chunks()
    table, duplicates = keep_latest_sale(table)
    return table, rejected + duplicates
