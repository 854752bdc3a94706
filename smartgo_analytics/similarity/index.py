"""Sold items by how their pictures look: a usearch HNSW index per tenant, in segments.

A tenant's index is a list of segments and a manifest saying which days each holds. A segment is a
usearch file (the graph: a bit a dimension for each vector, against the segment's centre), a
float16 file of the unit vectors (to rank the graph's candidates by cosine) and a Parquet file of
the items, both in key order; its files are named once and never changed. A day is added to the
tenant's newest segment while that stays under SEGMENT_VECTORS, otherwise it starts a new one; a
day materialised again replaces its own vectors in the segment that holds it. So a day's update
loads at most one segment, whatever the index's size, and a query searches every segment
memory-mapped (`view=True`): nothing is read whole. A graph can always be built again from its
segment's float16 vectors: a segment is, while its centre comes from few vectors.

A vector's key is its day and its row in that day (`vector_key`), so a day's keys are known
without reading anything.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smartgo_analytics.layout import (
    SIMILARITY_PREFIX,
    similarity_category_sums_key,
    similarity_manifest_key,
    similarity_segment_key,
)

PREFIX = SIMILARITY_PREFIX
SEGMENT_VECTORS = 200_000
ROW_BITS = 24  # rows of one tenant on one day: up to 16.7 million
# Chosen by measurement (docs/operating.md, "Comparables and embedding quality"): the graph holds each vector
# as one bit a dimension, whether the unit vector lies above its segment's centre there (the mean of
# the vectors the graph was built from), compared by Hamming distance. A walk so reads 128 bytes a
# vector where 8-bit vectors cost 1 KiB, and a graph builds in half their time. 32 links a node and
# 128 candidates while adding make a graph a search needs only 64 candidates in, of which the best
# CANDIDATES are ranked by the float16 vectors, which the bits alone misorder.
INDEX_OPTIONS = {"metric": "hamming", "dtype": "b1", "connectivity": 32, "expansion_add": 128}
EXPANSION_SEARCH = 64
CANDIDATES = 20
# A segment whose centre comes from fewer vectors than this is built again when a day joins it.
CENTRE_FROM = 10_000
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


manifest_key = similarity_manifest_key
segment_key = similarity_segment_key
SEGMENT_FILES = (".usearch", ".parquet", ".f16")  # the graph, the items, the float16 vectors


def segment_keys(tenant: str, name: str) -> tuple[str, str, str]:
    return tuple(segment_key(tenant, name, suffix) for suffix in SEGMENT_FILES)


def tenants_of(keys: Iterable[str]) -> list[str]:
    """The tenants whose manifests are among these object keys."""
    start, end = len(PREFIX) + 1, -len("/manifest.json")
    return [key[start:end] for key in keys if key.endswith("/manifest.json")]


def category_means_key(tenant: str, day: date) -> str:
    return similarity_category_sums_key(tenant, day.isoformat())


class StaleIndexError(ValueError):
    """An index whose graphs were built with other INDEX_OPTIONS: its next update builds them again."""


@dataclass
class Segment:
    name: str
    days: dict[str, int] = field(default_factory=dict)  # ISO day -> vectors
    # The mean of the unit vectors its graph was built from, and how many there were. None for a
    # graph of other INDEX_OPTIONS, which must be built again before it is searched.
    centre: np.ndarray | None = None
    centred_on: int = 0

    @property
    def count(self) -> int:
        return sum(self.days.values())


@dataclass
class Manifest:
    tenant: str
    dimension: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(segment.count for segment in self.segments)

    def days(self) -> dict[str, int]:
        return {day: n for segment in self.segments for day, n in segment.days.items()}

    def holding(self, day: date) -> Segment | None:
        return next((s for s in self.segments if day.isoformat() in s.days), None)

    def stale(self) -> list[Segment]:
        return [s for s in self.segments if s.centre is None]

    def require_current(self) -> None:
        if self.stale():
            raise StaleIndexError(
                f"tenant {self.tenant!r}'s index was built with other options: materialise "
                "similarity_index for any day to build it again"
            )

    def to_json(self) -> bytes:
        segments = [
            {
                "name": s.name,
                "days": dict(sorted(s.days.items())),
                "centred_on": s.centred_on,
                "centre": None if s.centre is None else [round(float(x), 6) for x in s.centre],
            }
            for s in self.segments
        ]
        body = {
            "tenant": self.tenant,
            "dimension": self.dimension,
            "index": INDEX_OPTIONS,
            "segments": segments,
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        current = body.get("index") == INDEX_OPTIONS
        segments = [
            Segment(
                s["name"],
                dict(s["days"]),
                np.asarray(s["centre"], np.float32) if current and s.get("centre") else None,
                int(s.get("centred_on", 0)),
            )
            for s in body["segments"]
        ]
        return cls(body["tenant"], int(body["dimension"]), segments)


def signs(units: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The graph's form of unit vectors: a bit a dimension, set where the vector exceeds the centre."""
    return np.packbits(np.atleast_2d(units) > centre, axis=1)


def new_index(dimension: int):
    from usearch.index import Index

    return Index(ndim=dimension, expansion_search=EXPANSION_SEARCH, **INDEX_OPTIONS)


def open_index(path: Path, view: bool):
    """A segment's index: memory-mapped (`view`) to search, or loaded to change it."""
    from usearch.index import Index

    index = Index.restore(str(path), view=view)
    if index is None:
        raise ValueError(f"{path} is not a usearch index")
    # usearch's file keeps neither: a restored index would take its defaults.
    index.expansion_search = EXPANSION_SEARCH
    index.expansion_add = INDEX_OPTIONS["expansion_add"]
    return index


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
        for start, end in ((0, first), (None, None), (last, len(keys))):
            if start is None:
                for _, chunk in batches(day_vectors):
                    out.write(unit(chunk).astype(np.float16).tobytes())
                continue
            for offset in range(start, end, ADD_ROWS):
                out.write(
                    old_vectors.read(offset, min(ADD_ROWS, end - offset))
                    .astype(np.float16)
                    .tobytes()
                )
    items = pa.concat_tables(
        [items.slice(0, first), day_items.cast(ITEM_SCHEMA), items.slice(last)]
    )
    return items, keys[first:last]


def built_graph(keys: np.ndarray, vectors: SpooledVectors, threads: int):
    """A segment's graph built anew from its float16 unit vectors (in key order), centred on their
    mean."""
    total = np.zeros(vectors.dimension, np.float64)
    for _, chunk in batches(vectors):
        total += chunk.sum(axis=0)
    centre = (total / max(1, len(vectors))).astype(np.float32)
    index = new_index(vectors.dimension)
    for start, chunk in batches(vectors):
        index.add(keys[start : start + len(chunk)], signs(chunk, centre), threads=threads)
    return index, centre


def graph_with_day(
    index, segment: Segment, replaced: np.ndarray, day_keys_: np.ndarray, day_vectors, threads: int
):
    """The segment's loaded graph with the day's vectors in place of the keys it had for it."""
    if len(replaced):
        index.remove(replaced)
    for start, chunk in batches(day_vectors):
        index.add(
            day_keys_[start : start + len(chunk)],
            signs(unit(chunk), segment.centre),
            threads=threads,
        )
    return index


def target_segment(manifest: Manifest, day: date, rows: int) -> Segment | None:
    """The segment the day goes into: the one holding it, else the newest while the day fits
    under SEGMENT_VECTORS; None for a new one."""
    holding = manifest.holding(day)
    if holding is not None:
        return holding
    if manifest.segments and manifest.segments[-1].count + rows <= SEGMENT_VECTORS:
        return manifest.segments[-1]
    return None


def new_segment_name(day: date) -> str:
    """Named by its first day and when it was made (UTC), so that an orphan's age can be told."""
    made = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"segment-{day.isoformat()}-{made}-{uuid.uuid4().hex[:12]}"


# Category sums: what drift is measured against.


CATEGORY_SUMS_SCHEMA = pa.schema(
    [
        pa.field("category", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("sum", pa.list_(pa.float64())),
    ]
)


def category_sums(categories: list[str | None], vectors) -> pa.Table:
    """Per category, the count and the sum of its unit vectors."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    names = np.array([category or "" for category in categories], dtype=object)
    for start, chunk in batches(vectors):
        units = unit(chunk).astype(np.float64)
        of_chunk = names[start : start + len(chunk)]
        for name in set(of_chunk):
            mine = of_chunk == name
            sums[name] = sums.get(name, 0) + units[mine].sum(axis=0)
            counts[name] = counts.get(name, 0) + int(mine.sum())
    ordered = sorted(sums)
    return pa.table(
        {
            "category": ordered,
            "count": [counts[n] for n in ordered],
            "sum": [sums[n].tolist() for n in ordered],
        },
        schema=CATEGORY_SUMS_SCHEMA,
    )


def unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def combined_means(tables: Iterable[pa.Table]) -> dict[str, tuple[int, np.ndarray]]:
    total: dict[str, tuple[int, np.ndarray]] = {}
    for table in tables:
        for row in table.to_pylist():
            count, vector = total.get(row["category"], (0, 0))
            total[row["category"]] = (count + row["count"], vector + np.asarray(row["sum"]))
    return total


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 if norm == 0 else 1.0 - float(np.dot(a, b)) / norm


# Weighted quantiles: the suggested price band.


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, quantiles) -> list[float]:
    """Quantiles of `values` where each counts by its weight: the value where the running share
    of weight (taken at each value's middle) reaches the quantile, interpolated linearly."""
    order = np.argsort(values)
    values = np.asarray(values, dtype=float)[order]
    weights = np.clip(np.asarray(weights, dtype=float)[order], 1e-9, None)
    positions = (np.cumsum(weights) - weights / 2) / weights.sum()
    return [float(np.interp(q, positions, values)) for q in quantiles]


def round_price(value: float) -> float:
    return math.floor(value * 100 + 0.5) / 100


def read_items(path: Path, columns: Iterable[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=list(columns) if columns else None)


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def write_items(table: pa.Table, path: Path) -> None:
    write_parquet(table.cast(ITEM_SCHEMA), path)


@dataclass
class OpenSegment:
    index: object  # usearch, memory-mapped
    centre: np.ndarray  # what the graph's bits are taken against
    keys: np.ndarray  # every key, ascending: a key's row in `vectors`
    vectors: np.ndarray  # float16 unit vectors, memory-mapped: only the rows a query ranks are read


def _walk(segment: OpenSegment, units: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The graph's CANDIDATES (at least k) for each query (`units`, unit vectors): their keys, and
    which of them were found (usearch may find fewer)."""
    if not len(segment.keys):
        return None
    wanted = min(max(k, CANDIDATES), len(segment.keys))
    matches = segment.index.search(signs(units, segment.centre), wanted, threads=1)
    found = np.zeros((len(units), wanted), np.uint64)
    if len(units) == 1:  # usearch answers one query with its found matches only
        found[0, : len(matches.keys)] = matches.keys
        counts = np.array([len(matches.keys)])
    else:
        found[:] = matches.keys
        counts = np.asarray(matches.counts)
    return found, np.arange(wanted)[None, :] < counts[:, None]


def _walk_all(segments: list[OpenSegment], units: np.ndarray, k: int) -> list:
    """(segment, keys, found) of each segment's walk that found anything."""
    walks = [(segment, _walk(segment, units, k)) for segment in segments]
    return [(segment, *walk) for segment, walk in walks if walk]


def _distances(segment: OpenSegment, found: np.ndarray, valid: np.ndarray, units: np.ndarray):
    """Cosine distances of the found keys to their queries, by the float16 vectors; infinity where
    nothing was found."""
    rows = np.clip(np.searchsorted(segment.keys, found), 0, len(segment.keys) - 1)
    candidates = segment.vectors[rows.reshape(-1)].astype(np.float32).reshape(*rows.shape, -1)
    distances = 1.0 - np.einsum("qcd,qd->qc", candidates, units).astype(np.float64)
    distances[~valid] = np.inf
    return distances


class TenantIndex:
    """A tenant's segments opened to search: each memory-mapped, its items read when asked."""

    def __init__(self, manifest: Manifest, paths: dict[str, tuple[Path, Path, Path]]):
        manifest.require_current()
        self.manifest = manifest
        self._paths = paths  # segment name -> (index file, items file, vectors file)
        self._segments = {}
        centres = {segment.name: segment.centre for segment in manifest.segments}
        for name, (index_path, items_path, vectors_path) in paths.items():
            keys = pq.read_table(items_path, columns=["key"]).column("key").to_numpy()
            # A plain array over the map: numpy's memmap class costs time on every row lookup.
            shape = (len(keys), manifest.dimension)
            vectors = (
                np.asarray(np.memmap(vectors_path, np.float16, "r", shape=shape))
                if len(keys)
                else np.zeros(shape, np.float16)
            )
            index = open_index(index_path, view=True)
            self._segments[name] = OpenSegment(index, centres[name], keys, vectors)
        self._items: dict[str, pa.Table] = {}
        # usearch lets go of the interpreter lock while it searches: the segments are searched at once.
        self._workers = max(1, min(len(paths), os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self._workers - 1) if self._workers > 1 else None

    def __len__(self) -> int:
        return sum(len(segment.keys) for segment in self._segments.values())

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest keys of each query over every segment and their cosine similarities,
        best first; a row has fewer than k when the index holds fewer (padded with key 0)."""
        units = unit(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        # The graphs are walked at once, this thread walking its share; their candidates are ranked
        # together after.
        shares = [list(self._segments.values())[n :: self._workers] for n in range(self._workers)]
        pending = [self._pool.submit(_walk_all, share, units, k) for share in shares[1:]]
        found = _walk_all(shares[0], units, k) + [w for f in pending for w in f.result()]
        if not found:
            empty = np.zeros((len(units), 0))
            return empty.astype(np.uint64), empty
        keys = np.concatenate([keys for _, keys, _ in found], axis=1)
        distances = np.concatenate([_distances(s, f, v, units) for s, f, v in found], axis=1)
        # Equal distances (one picture sold again) in a fixed order, the later key (day, row) first: the
        # same answer whichever order a graph found them in.
        order = np.lexsort((~keys, distances), axis=-1)[:, :k]
        keys = np.take_along_axis(keys, order, axis=1)
        distances = np.take_along_axis(distances, order, axis=1)
        similarities = np.clip(1.0 - distances, -1.0, 1.0)  # float16 rounding can pass 1
        return np.where(np.isinf(distances), 0, keys).astype(np.uint64), similarities

    def vector(self, key: int) -> np.ndarray | None:
        """A key's vector (a unit vector, float16 precision), or None."""
        for segment in self._segments.values():
            row = int(np.searchsorted(segment.keys, key))
            if row < len(segment.keys) and segment.keys[row] == key:
                return segment.vectors[row].astype(np.float32)
        return None

    def segment_items(self, name: str) -> pa.Table:
        if name not in self._items:
            self._items[name] = read_items(self._paths[name][1])
        return self._items[name]

    def items(self, keys: Iterable[int]) -> pa.Table:
        """The items of these keys, in their order (keys the index does not hold left out)."""
        wanted = np.asarray(list(keys), dtype=np.uint64)
        days = {date.fromordinal(int(d)).isoformat() for d in key_days(wanted)}
        found = []
        for segment in self.manifest.segments:
            if segment.name in self._paths and days & set(segment.days):
                table = self.segment_items(segment.name)
                found.append(table.filter(pa.compute.is_in(table.column("key"), pa.array(wanted))))
        if not found:
            return ITEM_SCHEMA.empty_table()
        table = pa.concat_tables(found)
        position = {int(key): n for n, key in enumerate(table.column("key").to_pylist())}
        return table.take([position[int(k)] for k in wanted if int(k) in position])

    def find_product(self, product_id: str) -> int | None:
        """The key of a product's vector, its latest sale's when it sold more than once."""
        found = None
        for segment in self.manifest.segments:
            if segment.name not in self._paths:
                continue
            table = self.segment_items(segment.name)
            match = table.filter(pa.compute.equal(table.column("product_id"), product_id))
            if match.num_rows:
                found = max([found or 0, *match.column("key").to_pylist()])
        return found
