"""Sold items by how their pictures look: a tenant's index opened for questions.

A tenant's index is a list of segments and a manifest saying which days each holds
(`similarity.manifest`). A segment is a usearch file (the graph: a bit a dimension for each vector,
against the segment's centre, `similarity.graph`), a float16 file of the unit vectors (to rank the
graph's candidates by cosine) and a Parquet file of the items, both in key order
(`similarity.segments`); its files are named once and never changed. A query searches every segment
memory-mapped (`view=True`): nothing is read whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smartgo_analytics.core.vectors import unit
from smartgo_analytics.similarity.graph import CANDIDATES, open_index, signs
from smartgo_analytics.similarity.manifest import Manifest
from smartgo_analytics.similarity.segments import ITEM_SCHEMA, key_days, read_items

if TYPE_CHECKING:
    from usearch.index import Index


@dataclass
class OpenSegment:
    index: Index  # usearch's, memory-mapped
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
        counts = np.asarray(matches.counts)  # type: ignore[union-attr]  # a batch's matches
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

    def __init__(self, manifest: Manifest, paths: Mapping[str, Sequence[Path]]):
        manifest.require_current()
        self.manifest = manifest
        self._paths = paths  # segment name -> (index file, items file, vectors file)
        self._segments = {}
        centres = {s.name: s.centre for s in manifest.segments if s.centre is not None}
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
        pool = self._pool
        pending = [pool.submit(_walk_all, share, units, k) for share in shares[1:]] if pool else []
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

    def all_items(self) -> pa.Table:
        """Every item of the index (read once, kept with the segments)."""
        tables = [
            self.segment_items(s.name) for s in self.manifest.segments if s.name in self._paths
        ]
        return pa.concat_tables(tables) if tables else ITEM_SCHEMA.empty_table()

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
