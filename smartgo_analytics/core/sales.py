"""Validation of SmartGo source rows and the calendar facts derived from a sale."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa

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
    12: "winter", 1: "winter", 2: "winter",
    3: "spring", 4: "spring", 5: "spring",
    6: "summer", 7: "summer", 8: "summer",
    9: "autumn", 10: "autumn", 11: "autumn",
}  # fmt: skip
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


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def validate_sale(row: dict[str, Any]) -> dict[str, Any] | Rejected:
    """Return the sale as a clean record, or why it cannot be used."""
    product_id = _text(row.get("id"))
    if product_id is None:
        return Rejected(None, "missing product id")
    tenant_id = _text(row.get("tenant_id"))
    if tenant_id is None:
        return Rejected(product_id, "missing tenant_id")

    raw_price = row.get("sold_price")
    if raw_price is None:
        return Rejected(product_id, "null sold_price")
    try:
        price = Decimal(str(raw_price))
    except (InvalidOperation, ValueError):
        return Rejected(product_id, f"unparseable sold_price {str(raw_price)[:40]!r}")
    if not price.is_finite():
        return Rejected(product_id, "non-finite sold_price")
    if price < 0:
        return Rejected(product_id, "negative sold_price")
    if price > MAX_PLAUSIBLE_PRICE:
        return Rejected(product_id, f"implausible sold_price above {MAX_PLAUSIBLE_PRICE}")

    sold_date = row.get("sold_date")
    if not isinstance(sold_date, datetime):
        return Rejected(product_id, "unparseable sold_date")
    if sold_date.tzinfo is None:
        return Rejected(product_id, "sold_date without time zone")

    image_url = _text(row.get("image_url"))
    if image_url is None:
        return Rejected(product_id, "missing image_url")

    return {
        "product_id": product_id,
        "tenant_id": tenant_id,
        "category": _text(row.get("category")),
        "brand": _text(row.get("brand")),
        "condition": _text(row.get("condition")),
        "sold_price": float(price),
        "sold_date": sold_date.astimezone(UTC),
        "image_url": image_url,
        "description": row.get("description"),
    }
