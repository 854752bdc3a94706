"""The similarity index over the sales' vectors, and how good the day's vectors look."""

import tempfile
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, multi_asset

from smartgo_analytics import checks
from smartgo_analytics.assets.pricing_intelligence import (
    GROUP,
    IO_RETRY,
    ONE_DAY_PER_RUN,
    smartgo_sales_iceberg,
)
from smartgo_analytics.core import sales_table
from smartgo_analytics.core import similarity as sim
from smartgo_analytics.core.embedding_quality import DayQuality, measure_day
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.settings import settings

READ_COLUMNS = ("tenant_id", *sim.ITEM_COLUMNS, "embedding_vector")
THREADS = 2


def spool_day(
    batches, dimension: int, directory: Path, counted: Counter
) -> dict[str, sim.DaySpool]:
    """The day's rows with a vector of the index's length, by tenant, spooled to disk."""
    spools: dict[str, sim.DaySpool] = {}
    for batch in batches:
        vectors = batch.column("embedding_vector")
        has = pc.invert(pc.is_null(vectors))
        counted["rows"] += batch.num_rows
        counted["without_vector"] += vectors.null_count
        right_length = pc.and_(has, pc.equal(pc.list_value_length(vectors), dimension))
        counted["vectors_of_another_length"] += pc.sum(pc.xor(has, right_length)).as_py() or 0
        batch = batch.filter(right_length)
        for tenant in pc.unique(batch.column("tenant_id")).to_pylist():
            rows = batch.filter(pc.equal(batch.column("tenant_id"), tenant))
            flat = rows.column("embedding_vector").flatten().to_numpy(zero_copy_only=False)
            if tenant not in spools:
                spools[tenant] = sim.DaySpool(directory, tenant, dimension)
            spools[tenant].add(rows.select(list(sim.ITEM_COLUMNS)), flat.reshape(-1, dimension))
    return spools


def indexed_tenants(store: ObjectStore) -> list[str]:
    return sim.tenants_of(store.list_keys(f"{sim.PREFIX}/"))


def load_manifest(store: ObjectStore, tenant: str, dimension: int) -> sim.Manifest:
    try:
        return sim.Manifest.from_json(store.get_bytes(sim.manifest_key(tenant)))
    except FileNotFoundError:
        return sim.Manifest(tenant, dimension)


def update_tenant(store: ObjectStore, manifest: sim.Manifest, day: date, spool: sim.DaySpool | None,
                  work: Path) -> list[str]:  # fmt: skip
    """Put the day's vectors (none when `spool` is None) into the tenant's index; the keys of the
    files it no longer uses, to delete once the new manifest is written. Segments whose graph was
    built with other options are built again first, one at a time."""
    rows = spool.rows if spool else 0
    target = sim.target_segment(manifest, day, rows)
    tenant = manifest.tenant
    retired = [key for segment in manifest.stale() if segment is not target
               for key in _rebuild(store, manifest, segment, work)]  # fmt: skip
    if target is None and not rows:
        if retired:
            store.put_bytes(sim.manifest_key(tenant), manifest.to_json(), "application/json")
        return retired
    new_vectors = work / "vectors.f16"
    day_items = spool.item_table(day) if spool else sim.ITEM_SCHEMA.empty_table()
    vectors = spool.vectors() if spool else np.zeros((0, manifest.dimension), np.float32)
    # A segment holding only this day is built anew without reading it.
    keep = target is not None and set(target.days) != {day.isoformat()}
    old = list(sim.segment_keys(tenant, target.name)) if target else []
    files = [store.local_path(key) for key in old] if keep else []
    try:
        items, old_vectors = sim.ITEM_SCHEMA.empty_table(), None
        if keep:
            items = sim.read_items(files[1])
            old_vectors = sim.SpooledVectors(
                files[2], items.num_rows, manifest.dimension, np.float16
            )
        items, replaced = sim.segment_vectors(
            items, old_vectors, day, day_items, vectors, new_vectors
        )
        keys = items.column("key").to_numpy()
        if keep and target.centre is not None and target.centred_on >= sim.CENTRE_FROM:
            index = sim.graph_with_day(sim.open_index(files[0], view=False), target, replaced,
                                       day_items.column("key").to_numpy(), vectors, THREADS)  # fmt: skip
            centre, centred_on = target.centre, target.centred_on
        else:
            written = sim.SpooledVectors(new_vectors, len(keys), manifest.dimension, np.float16)
            index, centre = sim.built_graph(keys, written, THREADS)
            centred_on = len(keys)
    finally:
        for path in files:
            store.release(path)
    days = dict(target.days) if target else {}
    days.pop(day.isoformat(), None)
    if rows:
        days[day.isoformat()] = rows
    segments = [s for s in manifest.segments if s is not target]
    if days:
        items_path = work / "items.parquet"
        sim.write_items(items, items_path)
        name = _put_segment(store, tenant, day, index, items_path, new_vectors, work)
        segments.append(sim.Segment(name, days, centre, centred_on))
    for path in (new_vectors, work / "items.parquet"):
        path.unlink(missing_ok=True)
    manifest.segments = sorted(segments, key=lambda s: min(s.days))
    sums_key = sim.category_means_key(tenant, day)
    if spool:
        categories = day_items.column("category").to_pylist()
        sums = sim.category_sums(categories, vectors)
        sums_path = work / "sums.parquet"
        sim.write_parquet(sums, sums_path)
        store.put_file(sums_key, sums_path)
    else:
        store.delete(sums_key)
    store.put_bytes(sim.manifest_key(tenant), manifest.to_json(), "application/json")
    return retired + old


def _put_segment(store: ObjectStore, tenant: str, day: date, index, items_path: Path,
                 vectors_path: Path, work: Path) -> str:  # fmt: skip
    """A segment's files stored under a new name (named by its first day); the name."""
    name = sim.new_segment_name(day)
    index_path = work / f"{name}.usearch"
    index.save(str(index_path))
    try:
        for path, key in zip((index_path, items_path, vectors_path), sim.segment_keys(tenant, name),
                             strict=True):  # fmt: skip
            store.put_file(key, path)
    finally:
        index_path.unlink(missing_ok=True)
    return name


def _rebuild(store: ObjectStore, manifest: sim.Manifest, segment: sim.Segment, work: Path):
    """The segment's graph built again from its float16 vectors, under a new name; the old keys."""
    old = list(sim.segment_keys(manifest.tenant, segment.name))
    files = [store.local_path(key) for key in old]
    try:
        keys = sim.read_items(files[1], ["key"]).column("key").to_numpy()
        vectors = sim.SpooledVectors(files[2], len(keys), manifest.dimension, np.float16)
        index, centre = sim.built_graph(keys, vectors, THREADS)
        first = date.fromisoformat(min(segment.days))
        name = _put_segment(store, manifest.tenant, first, index, files[1], files[2], work)
    finally:
        for path in files:
            store.release(path)
    segment.name, segment.centre, segment.centred_on = name, centre, len(keys)
    return old


def open_tenant(store: ObjectStore, manifest: sim.Manifest, opened: list[Path]) -> sim.TenantIndex:
    paths = {}
    for segment in manifest.segments:
        pair = tuple(
            store.local_path(key) for key in sim.segment_keys(manifest.tenant, segment.name)
        )
        opened.extend(pair)
        paths[segment.name] = pair
    return sim.TenantIndex(manifest, paths)


def table_vector_counts(iceberg: IcebergCatalog, months: set[tuple[str, str]] | None) -> Counter:
    """(tenant, ISO day) -> the table's rows with a vector of any length, read a batch at a time:
    of these (tenant, "YYYY-MM") months only, or of the whole table (None)."""
    counts: Counter = Counter()
    columns = ("tenant_id", "sold_date", "embedding_vector")
    if months is None:
        everything = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC), None
        scans = [everything]
    else:
        scans = [(first, _next_month(first), tenant) for tenant, month in sorted(months)
                 for first in [datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)]]  # fmt: skip
    for start, end, tenant in scans:
        for batch in iceberg.scan_day_files(start, end, columns, tenant=tenant):
            batch = batch.filter(pc.invert(pc.is_null(batch.column("embedding_vector"))))
            days = pc.strftime(batch.column("sold_date"), "%Y-%m-%d").to_pylist()
            counts.update(zip(batch.column("tenant_id").to_pylist(), days, strict=True))
    return counts


def _next_month(first: datetime) -> datetime:
    return (first + timedelta(days=32)).replace(day=1)


def table_vector_values(table) -> tuple[Counter, set[tuple[str, str]]] | None:
    """(tenant, "YYYY-MM") -> the vector values the table's data files hold, from the statistics
    their manifests keep (no data is read), and the months whose files cannot say (no counts, or
    delete files); None when the table is not partitioned by tenant, year and month."""
    if [f.name for f in table.spec().fields] != [f.name for f in sales_table.PARTITION_SPEC.fields]:
        return None
    element = table.schema().find_field("embedding_vector.element").field_id
    values: Counter = Counter()
    unknown: set[tuple[str, str]] = set()

    def month(partition) -> tuple[str, str]:
        return partition["tenant_id"], f"{partition['year']:04d}-{partition['month']:02d}"

    files = table.inspect.data_files().select(["partition", "value_counts", "null_value_counts"])
    for row in files.to_pylist():
        counts, nulls = dict(row["value_counts"] or []), dict(row["null_value_counts"] or [])
        if element in counts and element in nulls:
            # A vector's values, a null (or empty) vector one null entry.
            values[month(row["partition"])] += counts[element] - nulls[element]
        else:
            unknown.add(month(row["partition"]))
    for row in table.inspect.delete_files().select(["partition"]).to_pylist():
        unknown.add(month(row["partition"]))
    return values, unknown


def index_differences(
    store: ObjectStore, iceberg: IcebergCatalog, dimension: int
) -> tuple[list[str], int]:
    """Each tenant-day whose count in the index differs from the table's rows with a vector, and
    how many tenant-months had to be read for it. A month whose files' statistics hold exactly its
    index count of vectors is not read; the others are, to name their days."""
    index: Counter = Counter()
    for tenant in indexed_tenants(store):
        for day, count in load_manifest(store, tenant, dimension).days().items():
            index[(tenant, day)] = count
    sales = iceberg.existing_sales_table()
    statistics = table_vector_values(sales) if sales is not None else (Counter(), set())
    if statistics is None:
        months = None
    else:
        values, unknown = statistics
        by_month: Counter = Counter()
        for (tenant, day), count in index.items():
            by_month[(tenant, day[:7])] += count
        months = {m for m in set(values) | set(by_month) | unknown
                  if m in unknown or values[m] != by_month[m] * dimension}  # fmt: skip
    table = table_vector_counts(iceberg, months) if sales is not None else Counter()
    compared = [(tenant, day) for tenant, day in sorted(set(table) | set(index))
                if months is None or (tenant, day[:7]) in months]  # fmt: skip
    differences = [f"{tenant} {day}: index {index[(tenant, day)]}, table {table[(tenant, day)]}"
                   for tenant, day in compared if index[(tenant, day)] != table[(tenant, day)]]  # fmt: skip
    return differences, len(months) if months is not None else -1


INDEX = "similarity_index"
QUALITY = "embedding_quality"


@multi_asset(
    specs=[
        AssetSpec(
            INDEX,
            deps=[smartgo_sales_iceberg],
            group_name=GROUP,
            kinds={"usearch", "s3"},
            owners=settings().asset_owners,
            description="Per tenant, an HNSW index (cosine) of the sold items' vectors, in "
            "segments next to the table: each day's current rows, once",
        ),
        AssetSpec(
            QUALITY,
            deps=[smartgo_sales_iceberg],
            group_name=GROUP,
            kinds={"numpy"},
            owners=settings().asset_owners,
            description="The day's vectors: norms, duplicates from different images, "
            "neighbours that share a category, and drift of the per-category means",
        ),
    ],  # fmt: skip
    partitions_def=daily_partitions,
    retry_policy=IO_RETRY,
    backfill_policy=ONE_DAY_PER_RUN,
    check_specs=[checks.index_matches_table, checks.embeddings_look_right],
)
def similarity_index(
    context: AssetExecutionContext, iceberg: IcebergCatalog, object_store: ObjectStore
):
    """Put the day's vectors in each tenant's index in place of those it held for the day, then
    measure them against the trailing 30 days."""
    config = settings()
    day = context.partition_time_window.start.date()
    start, end = context.partition_time_window.start, context.partition_time_window.end
    counted: Counter = Counter()
    quality = DayQuality()
    with tempfile.TemporaryDirectory(prefix="smartgo-index-") as work:
        work = Path(work)
        batches = iceberg.scan_day_files(start, end, READ_COLUMNS)
        spools = spool_day(batches, config.embedding_dimension, work, counted)
        tenants = sorted(set(spools) | set(indexed_tenants(object_store)))
        indexed = 0
        for tenant in tenants:
            manifest = load_manifest(object_store, tenant, config.embedding_dimension)
            spool = spools.get(tenant)
            old = update_tenant(object_store, manifest, day, spool, work)
            for key in old:
                object_store.delete(key)
            indexed += manifest.count
            if spool:
                opened: list[Path] = []
                try:
                    tenant_index = open_tenant(object_store, manifest, opened)
                    trailing = trailing_sums(object_store, tenant, day, manifest)
                    measure_day(quality, tenant_index, day, spool, trailing)
                    tenant_index.close()
                finally:
                    for path in opened:
                        object_store.release(path)
        differences, months_read = index_differences(
            object_store, iceberg, config.embedding_dimension
        )
    context.log.info(
        f"{context.partition_key}: {sum(s.rows for s in spools.values())} vectors of "
        f"{len(spools)} tenant(s) indexed; the index holds {indexed} in all"
    )
    yield MaterializeResult(
        asset_key=INDEX,
        metadata={
            "day_vectors": sum(s.rows for s in spools.values()),
            "index_vectors": indexed,
            "tenants": len(tenants),
            "rows_without_vector": counted["without_vector"],
            "vectors_of_another_length": counted["vectors_of_another_length"],
            "location": object_store.uri(f"{sim.PREFIX}/"),
        },
    )
    yield checks.index_result(differences, indexed, months_read)
    thresholds = config.embedding_quality
    yield MaterializeResult(asset_key=QUALITY, metadata=quality.metadata())
    yield checks.quality_result(quality.problems(thresholds), quality.metadata(), thresholds)


def trailing_sums(
    store: ObjectStore, tenant: str, day: date, manifest: sim.Manifest
) -> list[pa.Table]:
    """The per-category sums of the 30 days before the day that the tenant's index holds."""
    days = set(manifest.days())
    tables = []
    for back in range(1, 31):
        earlier = day - timedelta(days=back)
        if earlier.isoformat() in days:
            try:
                path = store.local_path(sim.category_means_key(tenant, earlier))
            except FileNotFoundError:
                continue
            try:
                tables.append(sim.read_items(path))
            finally:
                store.release(path)
    return tables
