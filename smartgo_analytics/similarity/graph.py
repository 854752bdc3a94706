"""A segment's graph: a usearch HNSW index of one bit a dimension per vector, built, changed and
opened.

Chosen by measurement (benchmarks/README.md, "similarity_index_at_1m"; docs/operating.md,
"Comparables and embedding quality"): the graph holds each vector as one bit a dimension, whether
the unit vector lies above its segment's centre there (the mean of the vectors the graph was built
from), compared by Hamming distance. A walk so reads 128 bytes a vector where 8-bit vectors cost
1 KiB, and a graph builds in half their time. 32 links a node and 128 candidates while adding make a
graph a search needs only 64 candidates in, of which the best CANDIDATES are ranked by the float16
vectors, which the bits alone misorder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smartgo_analytics.core.vectors import unit
from smartgo_analytics.similarity.segments import SpooledVectors, batches

if TYPE_CHECKING:
    from usearch.index import Index

INDEX_OPTIONS: dict[str, Any] = {
    "metric": "hamming",
    "dtype": "b1",
    "connectivity": 32,
    "expansion_add": 128,
}
EXPANSION_SEARCH = 64
CANDIDATES = 20
# A segment whose centre comes from fewer vectors than this is built again when a day joins it.
CENTRE_FROM = 10_000


def signs(units: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The graph's form of unit vectors: a bit a dimension, set where the vector exceeds the centre."""
    return np.packbits(np.atleast_2d(units) > centre, axis=1)


def new_index(dimension: int) -> Index:
    # Imported here, as in open_index: usearch's native library takes 0.15 s to load, and a
    # comparables answer from the local lake is timed by its first question.
    from usearch.index import Index

    return Index(ndim=dimension, expansion_search=EXPANSION_SEARCH, **INDEX_OPTIONS)


def open_index(path: Path, view: bool) -> Index:
    """A segment's index: memory-mapped (`view`) to search, or loaded to change it."""
    from usearch.index import Index  # here: see new_index

    index = Index.restore(str(path), view=view)
    if index is None:
        raise ValueError(f"{path} is not a usearch index")
    # usearch's file keeps neither: a restored index would take its defaults. (usearch declares
    # these setters apart from their getters, which mypy reads as read-only properties.)
    index.expansion_search = EXPANSION_SEARCH  # type: ignore[misc]
    index.expansion_add = INDEX_OPTIONS["expansion_add"]  # type: ignore[misc]
    return index


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
    index, centre: np.ndarray, replaced: np.ndarray, keys: np.ndarray, day_vectors, threads: int
):
    """A segment's loaded graph (built around `centre`) with the day's vectors, under their `keys`,
    in place of the keys it had for the day (`replaced`)."""
    if len(replaced):
        index.remove(replaced)
    for start, chunk in batches(day_vectors):
        index.add(
            keys[start : start + len(chunk)],
            signs(unit(chunk), centre),
            threads=threads,
        )
    return index
