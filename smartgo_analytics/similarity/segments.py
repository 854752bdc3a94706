"""A tenant's index segments on local disk: the keys of their vectors, the files each is made of,
a day's vectors spooled as they are read, and a segment's vectors with a day's put in place.

A vector's key is its day and its row in that day (`vector_key`), so a day's keys are known
without reading anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smartgo_analytics.core.vectors import unit
from smartgo_analytics.layout import (
    similarity_segment_key,
)

ROW_BITS = 24  # rows of one tenant on one day: up to 16.7 million
ADD_ROWS = 4_000
ITEM_SCHEMA = pa.schema(
    [
        pa.field("key", pa.uint64(), nullable=False),
        pa.field("product_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("condition", pa.string()),
        pa.field("sold_price", pa.float64()),
        pa.field("sold_date", pa.timestamp("us", tz="UTC")),
        pa.field("image_sha256", pa.string()),
    ]
)
ITEM_COLUMNS = tuple(name for name in ITEM_SCHEMA.names if name != "key")


def vector_key(day: date, row: int) -> int:
    return (day.toordinal() << ROW_BITS) | row


def day_keys(day: date) -> tuple[int, int]:
    """The half-open range of a day's keys."""
    return day.toordinal() << ROW_BITS, (day.toordinal() + 1) << ROW_BITS


def key_days(keys: np.ndarray) -> np.ndarray:
    return np.asarray(keys, dtype=np.uint64) >> np.uint64(ROW_BITS)


SEGMENT_FILES = (".usearch", ".parquet", ".f16")  # the graph, the items, the float16 vectors


def segment_keys(manifest, name: str) -> tuple[str, str, str]:
    """The files of the segment `name` of the tenant's index that `manifest` describes."""
    space, tenant = manifest.space, manifest.tenant
    graph, items, vectors = (similarity_segment_key(space, tenant, name, s) for s in SEGMENT_FILES)
    return graph, items, vectors


def new_segment_name(day: date) -> str:
    """Named by its first day and when it was made (UTC), so that an orphan's age can be told."""
    made = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"segment-{day.isoformat()}-{made}-{uuid.uuid4().hex[:12]}"


@dataclass
class DaySpool:
    """One tenant's vectors of a day on local disk as they are read, with their items in memory
    (a few hundred bytes a row): a day's vectors are never held whole."""

    directory: Path
    tenant: str
    dimension: int
    items: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0

    def __post_init__(self):
        self.path = self.directory / f"{uuid.uuid4().hex}.f32"
        self._file = self.path.open("wb")

    def add(self, items: pa.RecordBatch, vectors: np.ndarray) -> None:
        self.items.append(items.cast(ITEM_SCHEMA.remove(0)))
        self._file.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self.rows += len(vectors)

    def vectors(self) -> SpooledVectors:
        self._file.close()
        return SpooledVectors(self.path, self.rows, self.dimension)

    def item_table(self, day: date) -> pa.Table:
        """The items, each keyed by the day and its row."""
        table = (
            pa.Table.from_batches(self.items, ITEM_SCHEMA.remove(0))
            if self.items
            else (ITEM_SCHEMA.remove(0).empty_table())
        )
        start, _ = day_keys(day)
        keys = pa.array(np.arange(start, start + table.num_rows, dtype=np.uint64))
        return table.add_column(0, ITEM_SCHEMA.field("key"), keys)


class SpooledVectors:
    """A spooled day's vectors, read from the file a piece at a time with plain reads: a memory map
    would keep every page it has read in the process's resident memory."""

    def __init__(self, path: Path, rows: int, dimension: int, dtype=np.float32):
        self.path, self.rows, self.dimension, self.dtype = path, rows, dimension, np.dtype(dtype)

    def __len__(self) -> int:
        return self.rows

    def read(self, start: int, rows: int) -> np.ndarray:
        rows = max(0, min(rows, self.rows - start))
        row_bytes = self.dimension * self.dtype.itemsize
        with self.path.open("rb") as handle:
            handle.seek(start * row_bytes)
            data = handle.read(rows * row_bytes)
        return np.frombuffer(data, self.dtype).reshape(rows, self.dimension).astype(np.float32)

    def take(self, rows: Iterable[int]) -> np.ndarray:
        return np.stack([self.read(int(row), 1)[0] for row in rows]).reshape(-1, self.dimension)


def batches(vectors, rows: int = ADD_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, vectors) pieces of an array or of SpooledVectors."""
    for start in range(0, len(vectors), rows):
        if isinstance(vectors, SpooledVectors):
            yield start, vectors.read(start, rows)
        else:
            yield start, np.asarray(vectors[start : start + rows], dtype=np.float32)


def segment_vectors(
    items: pa.Table,
    old_vectors: SpooledVectors | None,
    day: date,
    day_items: pa.Table,
    day_vectors,
    new_vectors: Path,
) -> tuple[pa.Table, np.ndarray]:
    """The segment's items with the day's in place of those it held for it, and its float16 unit
    vectors written so to `new_vectors`; with the keys the day had. A day's keys are one run of
    rows, so the rows before and after it are copied a piece at a time."""
    low, high = day_keys(day)
    keys = items.column("key").to_numpy()
    first, last = (int(n) for n in np.searchsorted(keys, [low, high]))
    with new_vectors.open("wb") as out:
        if old_vectors is not None:
            _copy_rows(old_vectors, 0, first, out)
        for _, chunk in batches(day_vectors):
            out.write(unit(chunk).astype(np.float16).tobytes())
        if old_vectors is not None:
            _copy_rows(old_vectors, last, len(keys), out)
    items = pa.concat_tables(
        [items.slice(0, first), day_items.cast(ITEM_SCHEMA), items.slice(last)]
    )
    return items, keys[first:last]


def _copy_rows(vectors: SpooledVectors, start: int, end: int, out: BinaryIO) -> None:
    for offset in range(start, end, ADD_ROWS):
        out.write(vectors.read(offset, min(ADD_ROWS, end - offset)).astype(np.float16).tobytes())


def read_items(path: Path, columns: Iterable[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=list(columns) if columns else None)


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def write_items(table: pa.Table, path: Path) -> None:
    write_parquet(table.cast(ITEM_SCHEMA), path)
