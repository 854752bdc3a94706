"""DynamoDB values to JSON values, and NDJSON encoding."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from functools import partial
from typing import Any

from boto3.dynamodb.types import Binary


def decimal_to_json(value: Decimal) -> int | float | None:
    """Integral values exactly as integers (38 digits included), others as floats, NaN/inf as None."""
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def plain_value(value: Any) -> tuple[Any, Counter[str]]:
    """A DynamoDB attribute value (as boto3's resource layer returns it) as a plain value: numbers
    as int or float, sets as sorted lists, binary as `{"$binary": base64}` (see `binary_text`).
    Every non-finite number becomes None; they are counted by where they were (`a.b: non-finite
    number`), beside the value."""
    nulls: Counter[str] = Counter()
    return _plain(value, nulls, ""), nulls


def _plain(value: Any, nulls: Counter[str], path: str) -> Any:
    if isinstance(value, Decimal):
        converted = decimal_to_json(value)
        if converted is None:
            nulls[f"{path}: non-finite number"] += 1
        return converted
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            nulls[f"{path}: non-finite number"] += 1
            return None
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, nulls, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        members = [_plain(v, nulls, path) for v in value]
        try:
            return sorted(members)
        except TypeError:  # a binary set: its members are objects
            return sorted(members, key=repr)
    if isinstance(value, (list, tuple)):
        return [_plain(v, nulls, path) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {BINARY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Binary):
        return {BINARY: base64.b64encode(bytes(value.value)).decode("ascii")}
    return value


# A binary attribute as JSON: an object of this one key, its base64 text the value.
BINARY = "$binary"


def binary_text(value: Any) -> str | None:
    """The base64 text of a binary attribute (as `plain_value` gives it), or None for another value."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BINARY), str):
        return value[BINARY]
    return None


def encode_ndjson(
    records: Iterable[Mapping[str, Any]], fields: Sequence[str] | None = None
) -> bytes:
    """One JSON object per line, UTF-8, no NaN; fields in the given order, or sorted by name.

    Text is written as itself, except that a record holding a lone surrogate (which DynamoDB's JSON
    can carry and UTF-8 cannot) is written with `\\uXXXX` escapes: the same value when read back.
    JSON escapes every control character, so no value can put a `\\n` inside a record.
    """
    lines = []
    for record in records:
        ordered = {name: record.get(name) for name in fields} if fields is not None else record
        dumps = partial(
            json.dumps, separators=(",", ":"), allow_nan=False, sort_keys=fields is None
        )
        line = dumps(ordered, ensure_ascii=False)
        try:
            lines.append(line.encode("utf-8"))
        except UnicodeEncodeError:
            lines.append(dumps(ordered, ensure_ascii=True).encode("ascii"))
    return b"\n".join(lines) + b"\n" if lines else b""


def decode_ndjson(data: bytes) -> list[dict[str, Any]]:
    """Parse NDJSON strictly: one JSON object per `\n`-ended line. Only `\n` ends a line (never
    `str.splitlines`, which also splits on U+2028, U+0085 and others a string may hold)."""
    records = []
    text = data.decode("utf-8")
    lines = text.removesuffix("\n").split("\n") if text else []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"line {number} is empty")
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"line {number} is not a JSON object")
        records.append(record)
    return records
