"""A tenant's index changed to hold a day's vectors: the segment that takes the day read, its
graph extended (or built anew), its files written under new names; stale graphs built again. The
new manifest and the files written are returned; committing them is `store.commit_day`'s."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np

from smartgo_analytics.layout import similarity_category_sums_key
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.similarity.graph import CENTRE_FROM, built_graph, graph_with_day, open_index
from smartgo_analytics.similarity.manifest import Manifest, Segment
from smartgo_analytics.similarity.quality import category_sums
from smartgo_analytics.similarity.segments import (
    ITEM_SCHEMA,
    DaySpool,
    SpooledVectors,
    new_segment_name,
    read_items,
    segment_keys,
    segment_vectors,
    write_items,
    write_parquet,
)

THREADS = 2


@dataclass(frozen=True)
class Update:
    """A tenant's manifest with a day, and the segment files that change wrote (deleted if the
    manifest is not committed) and that the new manifest no longer names (deleted once it is)."""

    manifest: Manifest
    changed: bool = False
    added: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()


def update_tenant(
    store: ObjectStore, manifest: Manifest, day: date, spool: DaySpool | None, work: Path
) -> Update:
    """The tenant's manifest changed to hold the day's vectors (none when `spool` is None), their
    segment files written under new names; the new manifest is the caller's to commit. Segments
    whose graph was built with other options are built again first, one at a time. Files written
    before a failure are deleted."""
    rows = spool.rows if spool else 0
    target = manifest.target(day, rows)
    stale = {id(segment) for segment in manifest.stale()}
    segments: list[Segment] = []
    added: list[str] = []
    retired: list[str] = []
    try:
        for segment in manifest.segments:
            if id(segment) in stale and segment is not target:
                retired += segment_keys(manifest, segment.name)
                segment, written = _rebuild(store, manifest, segment, work)
                added += written
            segments.append(segment)
        rebuilt = replace(manifest, segments=segments)
        if target is None and not rows:
            return Update(rebuilt, bool(added), tuple(added), tuple(retired))
        with_day, written = _with_day(store, rebuilt, target, day, spool, work)
        added += written
    except BaseException:
        for key in added:
            store.delete(key)
        raise
    if target is not None:
        retired += segment_keys(manifest, target.name)
    return Update(with_day, True, tuple(added), tuple(retired))


def _with_day(
    store: ObjectStore,
    manifest: Manifest,
    target: Segment | None,
    day: date,
    spool: DaySpool | None,
    work: Path,
) -> tuple[Manifest, list[str]]:
    """The manifest with the day's vectors in `target` (or a new segment), and the files written:
    the segment's, and the day's per-category sums."""
    tenant = manifest.tenant
    day_items = spool.item_table(day) if spool else ITEM_SCHEMA.empty_table()
    vectors = spool.vectors() if spool else np.zeros((0, manifest.dimension), np.float32)
    new_vectors = work / "vectors.f16"
    items, index, centre, centred_on = _segment_with_day(
        store, manifest, target, day, day_items, vectors, new_vectors
    )
    days = dict(target.days) if target else {}
    days.pop(day.isoformat(), None)
    if spool and spool.rows:
        days[day.isoformat()] = spool.rows
    segments = [s for s in manifest.segments if s is not target]
    written: list[str] = []
    if days:
        items_path = work / "items.parquet"
        write_items(items, items_path)
        name, written = _put_segment(store, manifest, day, index, items_path, new_vectors, work)
        segments.append(Segment(name, days, centre, centred_on))
    for path in (new_vectors, work / "items.parquet"):
        path.unlink(missing_ok=True)
    sums_key = similarity_category_sums_key(manifest.space, tenant, day.isoformat())
    if spool:
        sums_path = work / "sums.parquet"
        write_parquet(category_sums(day_items.column("category").to_pylist(), vectors), sums_path)
        store.put_file(sums_key, sums_path)
    else:
        store.delete(sums_key)
    return replace(manifest, segments=sorted(segments, key=lambda s: min(s.days))), written


def _segment_with_day(store, manifest, target, day, day_items, vectors, new_vectors):
    """The target segment's items with the day's replaced, its graph with the day's vectors (the
    float16 vectors written to `new_vectors`), its centre and how many vectors made the centre."""
    # A segment holding only this day is built anew without reading it.
    kept = target if target is not None and set(target.days) != {day.isoformat()} else None
    files = []
    try:
        for key in segment_keys(manifest, kept.name) if kept else []:
            files.append(store.local_path(key))
        items, old_vectors = ITEM_SCHEMA.empty_table(), None
        if kept:
            items = read_items(files[1])
            old_vectors = SpooledVectors(files[2], items.num_rows, manifest.dimension, np.float16)
        items, replaced = segment_vectors(items, old_vectors, day, day_items, vectors, new_vectors)
        keys = items.column("key").to_numpy()
        if kept and kept.centre is not None and kept.centred_on >= CENTRE_FROM:
            index = graph_with_day(
                open_index(files[0], view=False),
                kept.centre,
                replaced,
                day_items.column("key").to_numpy(),
                vectors,
                THREADS,
            )
            return items, index, kept.centre, kept.centred_on
        written = SpooledVectors(new_vectors, len(keys), manifest.dimension, np.float16)
        index, centre = built_graph(keys, written, THREADS)
        return items, index, centre, len(keys)
    finally:
        for path in files:
            store.release(path)


def _put_segment(
    store: ObjectStore,
    manifest: Manifest,
    day: date,
    index,
    items_path: Path,
    vectors_path: Path,
    work: Path,
) -> tuple[str, list[str]]:
    """A segment's files stored under a new name (named by its first day): the name and the keys
    written (none left behind if one fails)."""
    name = new_segment_name(day)
    index_path = work / f"{name}.usearch"
    index.save(str(index_path))
    keys = list(segment_keys(manifest, name))
    try:
        for path, key in zip((index_path, items_path, vectors_path), keys, strict=True):
            store.put_file(key, path)
    except BaseException:
        for key in keys:
            store.delete(key)
        raise
    finally:
        index_path.unlink(missing_ok=True)
    return name, keys


def _rebuild(
    store: ObjectStore, manifest: Manifest, segment: Segment, work: Path
) -> tuple[Segment, list[str]]:
    """The segment with its graph built again from its float16 vectors, under a new name; the
    keys written."""
    files = []
    try:
        for key in segment_keys(manifest, segment.name):
            files.append(store.local_path(key))
        keys = read_items(files[1], ["key"]).column("key").to_numpy()
        vectors = SpooledVectors(files[2], len(keys), manifest.dimension, np.float16)
        index, centre = built_graph(keys, vectors, THREADS)
        first = date.fromisoformat(min(segment.days))
        name, written = _put_segment(store, manifest, first, index, files[1], files[2], work)
    finally:
        for path in files:
            store.release(path)
    return replace(segment, name=name, centre=centre, centred_on=len(keys)), written
