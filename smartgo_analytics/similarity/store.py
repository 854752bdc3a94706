"""The similarity index's upkeep on the object store: a day's vectors spooled, each tenant's
segments rebuilt and its manifest committed with a conditional write (safe under runs at once),
orphans deleted, the index checked against the table, the day's quality measured."""

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from smartgo_analytics.core.retry import retry_until
from smartgo_analytics.layout import (
    index_space,
    similarity_category_sums_key,
    similarity_manifest_key,
    similarity_segment_key,
)
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.similarity.manifest import Manifest
from smartgo_analytics.similarity.quality import DayQuality, measure_day
from smartgo_analytics.similarity.reader import (
    IndexReader,
    indexed_tenants,
    load_manifest,
    load_versioned,
)
from smartgo_analytics.similarity.segments import (
    ITEM_COLUMNS,
    DaySpool,
    read_items,
)
from smartgo_analytics.similarity.update import update_tenant

READ_COLUMNS = ("tenant_id", *ITEM_COLUMNS, "embedding_model", "embedding_vector")


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
    of_another_model: int = 0  # left out: an index holds one model's vectors

    @property
    def vectors(self) -> int:
        return sum(spool.rows for spool in self.spools.values())


def spool_day(batches, dimension: int, model: str, directory: Path) -> SpooledDay:
    day = SpooledDay()
    for batch in batches:
        vectors = batch.column("embedding_vector")
        has = pc.invert(pc.is_null(vectors))
        day.rows += batch.num_rows
        day.without_vector += vectors.null_count
        day.with_vector.update(batch.filter(has).column("tenant_id").to_pylist())
        of_model = pc.and_(has, pc.equal(batch.column("embedding_model"), model))
        day.of_another_model += pc.sum(pc.xor(has, of_model)).as_py() or 0
        right_length = pc.and_(of_model, pc.equal(pc.list_value_length(vectors), dimension))
        day.of_another_length += pc.sum(pc.xor(of_model, right_length)).as_py() or 0
        batch = batch.filter(right_length)
        for tenant in pc.unique(batch.column("tenant_id")).to_pylist():
            rows = batch.filter(pc.equal(batch.column("tenant_id"), tenant))
            flat = rows.column("embedding_vector").flatten().to_numpy(zero_copy_only=False)
            if tenant not in day.spools:
                day.spools[tenant] = DaySpool(directory, tenant, dimension)
            day.spools[tenant].add(rows.select(list(ITEM_COLUMNS)), flat.reshape(-1, dimension))
    return day


def commit_tenants(
    store: ObjectStore,
    spooled: SpooledDay,
    dimension: int,
    model: str,
    day: date,
    directory: Path,
) -> dict[str, Manifest]:
    """The day committed to the index of each tenant that sold that day or that the index holds
    (a day materialised again may have lost a tenant's sales): each tenant's manifest."""
    tenants = sorted(
        set(spooled.spools) | set(indexed_tenants(store, index_space(model, dimension)))
    )
    return {
        tenant: commit_day(
            store, tenant, dimension, day, spooled.spools.get(tenant), directory, model
        )
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
        "vectors_of_another_model": spooled.of_another_model,
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


def commit_day(
    store: ObjectStore,
    tenant: str,
    dimension: int,
    day: date,
    spool: DaySpool | None,
    work: Path,
    model: str,
) -> Manifest:
    """Put the day's vectors in the tenant's index of `model`'s vectors of this length (none when
    `spool` is None) and commit its manifest; built again on the newer manifest when another run
    committed first. Each model and length has an index of its own (`layout.index_space`)."""

    def attempt(_: int) -> Manifest | None:
        """The tenant's manifest with the day, committed; None when another run committed first."""
        manifest, version = load_versioned(store, tenant, dimension, model)
        try:
            update = update_tenant(store, manifest, day, spool, work)
        except FileNotFoundError:  # a segment that a run committing meanwhile retired
            return None
        if not update.changed:
            return manifest
        key = similarity_manifest_key(manifest.space, tenant)
        if not store.put_if_version(key, update.manifest.to_json(), version):
            for added in update.added:
                store.delete(added)
            return None
        for retired in update.retired:
            store.delete(retired)
        delete_orphans(store, update.manifest)
        return update.manifest

    return retry_until(
        attempt,
        attempts=COMMIT_ATTEMPTS,
        base_s=0.1,
        gave_up=f"tenant {tenant!r}: its index manifest kept changing while adding {day}; is the "
        "similarity_index pool's limit 1?",
    )


def delete_orphans(
    store: ObjectStore, manifest: Manifest, now: datetime | None = None
) -> list[str]:
    """Delete the tenant's segment files that its manifest does not name and that are older than
    ORPHAN_AGE (a name without its time is older than the time in names); their keys."""
    named = {segment.name for segment in manifest.segments}
    oldest = (now or datetime.now(UTC)) - ORPHAN_AGE
    deleted = []
    for key in store.list_keys(
        similarity_segment_key(manifest.space, manifest.tenant, "segment-", "")
    ):
        name = key.rsplit("/", 1)[-1].split(".", 1)[0]
        match = _SEGMENT_NAME.fullmatch(name)
        if not match or name in named:
            continue
        made = match.group(1)
        if made is None or datetime.strptime(made, "%Y%m%dT%H%M%S").replace(tzinfo=UTC) < oldest:
            store.delete(key)
            deleted.append(key)
    return deleted


def day_differences(
    store: ObjectStore, tenants: list[str], day: date, table: Counter, dimension: int, model: str
) -> list[str]:
    """Each tenant whose index, read back, holds another count of vectors for the day than the
    table's rows with a vector (`table`: tenant -> rows)."""
    differences = []
    for tenant in tenants:
        indexed = load_manifest(store, tenant, dimension, model).days().get(day.isoformat(), 0)
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
                    similarity_category_sums_key(manifest.space, tenant, earlier.isoformat())
                ) as path:
                    tables.append(read_items(path))
            except FileNotFoundError:
                continue
    return tables
