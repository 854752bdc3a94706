"""The similarity index's upkeep on the object store: a day's vectors spooled, each tenant's
segments rebuilt and its manifest committed with a conditional write (safe under runs at once),
orphans deleted, the index checked against the table, the day's quality measured."""

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from smartgo_analytics.core.retry import retry_until
from smartgo_analytics.layout import (
    similarity_category_sums_key,
    similarity_manifest_key,
    similarity_segment_key,
)
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.similarity.graph import CENTRE_FROM, built_graph, graph_with_day, open_index
from smartgo_analytics.similarity.manifest import Manifest, Segment
from smartgo_analytics.similarity.quality import DayQuality, category_sums, measure_day
from smartgo_analytics.similarity.reader import (
    IndexReader,
    indexed_tenants,
    load_manifest,
    load_versioned,
)
from smartgo_analytics.similarity.segments import (
    ITEM_COLUMNS,
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

READ_COLUMNS = ("tenant_id", *ITEM_COLUMNS, "embedding_vector")
THREADS = 2


@dataclass
class SpooledDay:
    """The day's rows with a vector of the index's length, by tenant, spooled to disk, and the
    table's figures for the day."""

    spools: dict[str, DaySpool] = field(default_factory=dict)
    with_vector: Counter = field(
        default_factory=Counter
    )  # tenant -> rows with a vector of any length
    rows: int = 0
    without_vector: int = 0
    of_another_length: int = 0

    @property
    def vectors(self) -> int:
        return sum(spool.rows for spool in self.spools.values())


def spool_day(batches, dimension: int, directory: Path) -> SpooledDay:
    day = SpooledDay()
    for batch in batches:
        vectors = batch.column("embedding_vector")
        has = pc.invert(pc.is_null(vectors))
        day.rows += batch.num_rows
        day.without_vector += vectors.null_count
        day.with_vector.update(batch.filter(has).column("tenant_id").to_pylist())
        right_length = pc.and_(has, pc.equal(pc.list_value_length(vectors), dimension))
        day.of_another_length += pc.sum(pc.xor(has, right_length)).as_py() or 0
        batch = batch.filter(right_length)
        for tenant in pc.unique(batch.column("tenant_id")).to_pylist():
            rows = batch.filter(pc.equal(batch.column("tenant_id"), tenant))
            flat = rows.column("embedding_vector").flatten().to_numpy(zero_copy_only=False)
            if tenant not in day.spools:
                day.spools[tenant] = DaySpool(directory, tenant, dimension)
            day.spools[tenant].add(rows.select(list(ITEM_COLUMNS)), flat.reshape(-1, dimension))
    return day


def commit_tenants(
    store: ObjectStore, spooled: SpooledDay, dimension: int, day: date, directory: Path
) -> dict[str, Manifest]:
    """The day committed to the index of each tenant that sold that day or that the index holds
    (a day materialised again may have lost a tenant's sales): each tenant's manifest."""
    tenants = sorted(set(spooled.spools) | set(indexed_tenants(store)))
    return {
        tenant: commit_day(store, tenant, dimension, day, spooled.spools.get(tenant), directory)
        for tenant in tenants
    }


def index_metadata(spooled: SpooledDay, manifests: dict[str, Manifest], uri: str) -> dict:
    indexed = sum(manifest.count for manifest in manifests.values())
    return {
        "day_vectors": spooled.vectors,
        "index_vectors": indexed,
        "tenants": len(manifests),
        "rows_without_vector": spooled.without_vector,
        "vectors_of_another_length": spooled.of_another_length,
        "dagster/uri": uri,
        "dagster/row_count": indexed,
        "dagster/partition_row_count": spooled.vectors,
    }


# Runs of the index step are serialised by the `similarity_index` pool (pools.py); the manifest is also written only if it is still the one the update was made from, so
# a run that meets another (a pool left at its default limit) builds its update again on theirs.
COMMIT_ATTEMPTS = 8
# A segment file no manifest names, older than this, is a crashed run's and is deleted. Younger
# ones may be another run's, not yet committed.
ORPHAN_AGE = timedelta(hours=1)
_SEGMENT_NAME = re.compile(r"segment-\d{4}-\d{2}-\d{2}-(?:(\d{8}T\d{6})-)?[0-9a-f]+")


@dataclass(frozen=True)
class Update:
    """A tenant's manifest with a day, and the segment files that change wrote (deleted if the
    manifest is not committed) and that the new manifest no longer names (deleted once it is)."""

    manifest: Manifest
    changed: bool = False
    added: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()


def commit_day(
    store: ObjectStore,
    tenant: str,
    dimension: int,
    day: date,
    spool: DaySpool | None,
    work: Path,
) -> Manifest:
    """Put the day's vectors in the tenant's index (none when `spool` is None) and commit its
    manifest; built again on the newer manifest when another run committed first."""
    return retry_until(
        lambda _: _try_commit(store, tenant, dimension, day, spool, work),
        attempts=COMMIT_ATTEMPTS,
        base_s=0.1,
        gave_up=f"tenant {tenant!r}: its index manifest kept changing while adding {day}; is the "
        "similarity_index pool's limit 1?",
    )


def _try_commit(
    store: ObjectStore, tenant: str, dimension: int, day: date, spool: DaySpool | None, work: Path
) -> Manifest | None:
    """The tenant's manifest with the day, committed; None when another run committed first."""
    manifest, version = load_versioned(store, tenant, dimension)
    try:
        update = update_tenant(store, manifest, day, spool, work)
    except FileNotFoundError:  # a segment that a run committing meanwhile retired
        return None
    if not update.changed:
        return manifest
    key = similarity_manifest_key(tenant)
    if not store.put_if_version(key, update.manifest.to_json(), version):
        for added in update.added:
            store.delete(added)
        return None
    for retired in update.retired:
        store.delete(retired)
    delete_orphans(store, update.manifest)
    return update.manifest


def delete_orphans(
    store: ObjectStore, manifest: Manifest, now: datetime | None = None
) -> list[str]:
    """Delete the tenant's segment files that its manifest does not name and that are older than
    ORPHAN_AGE (a name without its time is older than the time in names); their keys."""
    named = {segment.name for segment in manifest.segments}
    oldest = (now or datetime.now(UTC)) - ORPHAN_AGE
    deleted = []
    for key in store.list_keys(similarity_segment_key(manifest.tenant, "segment-", "")):
        name = key.rsplit("/", 1)[-1].split(".", 1)[0]
        match = _SEGMENT_NAME.fullmatch(name)
        if not match or name in named:
            continue
        made = match.group(1)
        if made is None or datetime.strptime(made, "%Y%m%dT%H%M%S").replace(tzinfo=UTC) < oldest:
            store.delete(key)
            deleted.append(key)
    return deleted


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
                retired += segment_keys(manifest.tenant, segment.name)
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
        retired += segment_keys(manifest.tenant, target.name)
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
        name, written = _put_segment(store, tenant, day, index, items_path, new_vectors, work)
        segments.append(Segment(name, days, centre, centred_on))
    for path in (new_vectors, work / "items.parquet"):
        path.unlink(missing_ok=True)
    sums_key = similarity_category_sums_key(tenant, day.isoformat())
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
        for key in segment_keys(manifest.tenant, kept.name) if kept else []:
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
    tenant: str,
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
    keys = list(segment_keys(tenant, name))
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
        for key in segment_keys(manifest.tenant, segment.name):
            files.append(store.local_path(key))
        keys = read_items(files[1], ["key"]).column("key").to_numpy()
        vectors = SpooledVectors(files[2], len(keys), manifest.dimension, np.float16)
        index, centre = built_graph(keys, vectors, THREADS)
        first = date.fromisoformat(min(segment.days))
        name, written = _put_segment(store, manifest.tenant, first, index, files[1], files[2], work)
    finally:
        for path in files:
            store.release(path)
    return replace(segment, name=name, centre=centre, centred_on=len(keys)), written


def day_differences(
    store: ObjectStore, tenants: list[str], day: date, table: Counter, dimension: int
) -> list[str]:
    """Each tenant whose index, read back, holds another count of vectors for the day than the
    table's rows with a vector (`table`: tenant -> rows)."""
    differences = []
    for tenant in tenants:
        indexed = load_manifest(store, tenant, dimension).days().get(day.isoformat(), 0)
        if indexed != table[tenant]:
            differences.append(f"{tenant} {day}: index {indexed}, table {table[tenant]}")
    return differences


def measure_tenants(
    store: ObjectStore,
    manifests: dict[str, Manifest],
    day: date,
    spools: dict[str, DaySpool],
) -> DayQuality:
    """The day's vectors of each tenant that sold that day, against its index and trailing days."""
    reader = IndexReader(store)
    try:
        parts = [
            measure_day(
                reader.open(manifests[tenant]),
                day,
                spool,
                trailing_sums(store, tenant, day, manifests[tenant]),
            )
            for tenant, spool in spools.items()
        ]
    finally:
        reader.close()
    return DayQuality.combined(parts)


def trailing_sums(store: ObjectStore, tenant: str, day: date, manifest: Manifest) -> list[pa.Table]:
    """The per-category sums of the 30 days before the day that the tenant's index holds."""
    days = set(manifest.days())
    tables = []
    for back in range(1, 31):
        earlier = day - timedelta(days=back)
        if earlier.isoformat() in days:
            try:
                with store.local_copy(
                    similarity_category_sums_key(tenant, earlier.isoformat())
                ) as path:
                    tables.append(read_items(path))
            except FileNotFoundError:
                continue
    return tables
