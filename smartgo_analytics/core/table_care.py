"""The Iceberg table's care: what it decides (which snapshots expire, which files are orphans, which
small files are compacted together: plain functions over plain data), then doing it on pyiceberg's
public API. The `iceberg_maintenance` job (maintenance.py) runs it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from pyarrow.fs import FileSelector, FileType
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThanOrEqual,
    Reference,
)
from pyiceberg.expressions.literals import literal
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

from smartgo_analytics.core import sales_table
from smartgo_analytics.core.retry import retry_until


@dataclass(frozen=True)
class Retention:
    expire_older_than: timedelta = timedelta(days=7)
    keep_last: int = 10
    orphan_grace: timedelta = timedelta(days=3)
    target_file_size: int = 128 * 2**20


def snapshots_to_expire(
    snapshots: Iterable[tuple[int, datetime]],
    now: datetime,
    retention: Retention,
    protected: set[int],
) -> list[int]:
    """Snapshots (id, committed at) older than the retention, except the last `keep_last` and the
    protected ones (the current snapshot, branch and tag heads)."""
    newest_first = sorted(snapshots, key=lambda s: s[1], reverse=True)
    cutoff = now - retention.expire_older_than
    return [
        snapshot_id
        for snapshot_id, committed in newest_first[retention.keep_last :]
        if committed < cutoff and snapshot_id not in protected
    ]


def orphans(
    files: Iterable[tuple[str, datetime]], referenced: set[str], now: datetime, grace: timedelta
) -> list[str]:
    """Files (path, last modified) that nothing live refers to and that are older than the grace
    period: a file younger than that may belong to a commit still being written."""
    return sorted(
        path for path, modified in files if path not in referenced and modified < now - grace
    )


@dataclass(frozen=True)
class DataFileInfo:
    path: str
    size: int
    first_sold: datetime  # the file's smallest and largest sold_date
    last_sold: datetime


def compaction_groups(
    files: Iterable[DataFileInfo], target: int
) -> list[tuple[datetime, datetime, int]]:
    """Time ranges (first, last sold_date, number of files) of one partition whose small files are
    rewritten as one file each. Files below the target whose time ranges overlap stay in one group
    (a range is replaced as a whole); groups are filled up to the target, oldest first. A group of
    one file is left as it is."""
    small = sorted((f for f in files if f.size < target), key=lambda f: (f.first_sold, f.last_sold))
    clusters: list[list[DataFileInfo]] = []
    for info in small:
        if clusters and info.first_sold <= max(f.last_sold for f in clusters[-1]):
            clusters[-1].append(info)
        else:
            clusters.append([info])
    groups: list[list[DataFileInfo]] = []
    for cluster in clusters:
        size = sum(f.size for f in cluster)
        if groups and sum(f.size for f in groups[-1]) + size <= target:
            groups[-1].extend(cluster)
        else:
            groups.append(list(cluster))
    return [
        (min(f.first_sold for f in group), max(f.last_sold for f in group), len(group))
        for group in groups
        if len(group) > 1
    ]


# Doing it, on pyiceberg's public API: each step one commit (per partition, for compaction).


@dataclass(frozen=True)
class MaintenanceReport:
    """What a maintenance run did, for the run's metadata and the command's output."""

    skipped: str | None = None
    partitions_compacted: tuple[dict, ...] = ()
    snapshots_expired: int = 0
    snapshots_left: int = 0
    files_removed: int = 0
    bytes_freed: int = 0
    unreferenced_in_grace: int = 0
    commit_retries: int = 0


@dataclass(frozen=True)
class Compacted:
    partition: tuple  # (tenant_id, year, month)
    files_before: int
    attempts: int  # commits tried: more than 1 when a concurrent write came first


@dataclass(frozen=True)
class Removed:
    files: int
    bytes: int
    in_grace: int  # unreferenced files younger than the grace period, left for now


COMMIT_ATTEMPTS = 3


def maintained_by_catalog(properties: dict[str, str]) -> bool:
    """S3 Tables compacts, expires snapshots and removes unreferenced files of its tables itself."""
    return "s3tables" in (properties.get("rest.signing-name", "") + properties.get("warehouse", ""))


S3_TABLES_FILE_SIZE_MB = (64, 512)  # what PutTableMaintenanceConfiguration takes


def set_s3_tables_maintenance(
    properties: dict[str, str], identifier: str, retention: Retention
) -> str | None:
    """The retention given to S3 Tables as the table's own maintenance configuration
    (PutTableMaintenanceConfiguration: snapshot management and compaction), in place of AWS's
    defaults (snapshots kept 120 hours, at least 1); what was set, in words (None: there is no
    such table yet). Unreferenced files are removed by the table bucket's own setting, which is
    the bucket owner's."""
    size_mb = max(1, retention.target_file_size // 2**20)
    if not S3_TABLES_FILE_SIZE_MB[0] <= size_mb <= S3_TABLES_FILE_SIZE_MB[1]:
        raise ValueError(
            f"target_file_size (maintain --target-file-size) is {size_mb} MB: S3 Tables' "
            f"compaction takes {S3_TABLES_FILE_SIZE_MB[0]} to {S3_TABLES_FILE_SIZE_MB[1]} MB"
        )
    import boto3  # here: boto3's import is a second the other catalogs' readers never need

    region = properties.get("rest.signing-region") or properties.get("client.region")
    client = boto3.client("s3tables", region_name=region)
    namespace, name = identifier.rsplit(".", 1)
    hours = max(1, math.ceil(retention.expire_older_than.total_seconds() / 3600))
    for kind, settings in (
        ("icebergSnapshotManagement", {"minSnapshotsToKeep": retention.keep_last,
                                       "maxSnapshotAgeHours": hours}),
        ("icebergCompaction", {"targetFileSizeMB": size_mb}),
    ):  # fmt: skip
        try:
            client.put_table_maintenance_configuration(
                tableBucketARN=properties["warehouse"],
                namespace=namespace,
                name=name,
                type=kind,
                value={"status": "enabled", "settings": {kind: settings}},
            )
        except client.exceptions.NotFoundException:
            return None
    return (
        f"S3 Tables maintains this table itself, set to: snapshots older than {hours} h expire, "
        f"the last {retention.keep_last} kept; files compacted to {size_mb} MB"
    )


def maintain_table(
    table: Table, retention: Retention, now: datetime | None = None, on_group_read=None
) -> MaintenanceReport:
    """Compact small files, expire old snapshots, then remove the files nothing live refers to,
    each step one commit (per partition, for compaction) on pyiceberg's public API. A commit that
    meets a concurrent one (a day being materialised) is tried again on the new table, at most
    COMMIT_ATTEMPTS times; then the run fails, having changed nothing it did not commit. Ages are
    measured at `now`, or when each step starts."""
    compacted = [
        _compact(table, partition, retention.target_file_size, on_group_read)
        for partition, files in sorted(_files_by_partition(table).items())
        if compaction_groups(files, retention.target_file_size)
    ]
    after = _files_by_partition(table.refresh()) if compacted else {}
    expired = _expire_snapshots(table.refresh(), retention, now or datetime.now(UTC))
    table = table.refresh()
    removed = _remove_unreferenced(table, retention, now or datetime.now(UTC))
    return MaintenanceReport(
        partitions_compacted=tuple(
            _partition(c.partition)
            | {"files_before": c.files_before, "files_after": len(after.get(c.partition, []))}
            for c in compacted
        ),
        snapshots_expired=expired,
        snapshots_left=len(table.snapshots()),
        files_removed=removed.files,
        bytes_freed=removed.bytes,
        unreferenced_in_grace=removed.in_grace,
        commit_retries=sum(c.attempts - 1 for c in compacted),
    )


def _compact(table: Table, key: tuple, target: int, on_group_read) -> Compacted:
    """The partition's small files rewritten, group by group, in one commit; made again from the
    partition's files as they are when a concurrent commit came first."""

    def attempt(number: int) -> Compacted | None:
        fresh = table.refresh()
        files = _files_by_partition(fresh).get(key, [])
        try:
            with fresh.transaction() as transaction:
                for first, last, _ in compaction_groups(files, target):
                    where = _partition_filter(_partition(key), first, last)
                    rows = fresh.scan(row_filter=where).to_arrow().sort_by(sales_table.ROW_ORDER)
                    if on_group_read is not None:
                        on_group_read(_partition(key))
                    transaction.delete(where)
                    transaction.append(rows)
        except (CommitFailedException, ValidationException):  # a concurrent write
            return None
        return Compacted(key, len(files), number)

    return retry_until(
        attempt,
        attempts=COMMIT_ATTEMPTS,
        base_s=0.05,
        gave_up=f"compacting {_partition(key)}: the table kept changing under the commit",
    )


def _partition(key: tuple) -> dict:
    names = [field.name for field in sales_table.PARTITION_SPEC.fields]
    return dict(zip(names, key, strict=True))


def _expire_snapshots(table: Table, retention: Retention, now: datetime) -> int:
    """Snapshots past the retention expired in one commit: how many."""
    protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
    current = table.current_snapshot()
    if current is not None:
        protected.add(current.snapshot_id)
    committed = [
        (s.snapshot_id, datetime.fromtimestamp(s.timestamp_ms / 1000, UTC))
        for s in table.snapshots()
    ]
    expired = snapshots_to_expire(committed, now, retention, protected)
    if expired:
        table.maintenance.expire_snapshots().by_ids(expired).commit()
    return len(expired)


def _files_by_partition(table: Table) -> dict[tuple, list[DataFileInfo]]:
    """The table's live data files by partition (tenant_id, year, month), with their sold_date
    bounds."""
    by_partition: dict[tuple, list[DataFileInfo]] = {}
    for f in table.inspect.files().to_pylist():
        bounds = f["readable_metrics"]["sold_date"]
        key = tuple(f["partition"][field.name] for field in sales_table.PARTITION_SPEC.fields)
        by_partition.setdefault(key, []).append(
            DataFileInfo(
                f["file_path"],
                f["file_size_in_bytes"],
                bounds["lower_bound"],
                bounds["upper_bound"],
            )
        )
    return by_partition


def _partition_filter(partition: dict, first: datetime, last: datetime) -> BooleanExpression:
    return And(
        *(EqualTo(term=Reference(name), value=literal(value)) for name, value in partition.items()),
        GreaterThanOrEqual(term=Reference("sold_date"), value=literal(first.isoformat())),
        LessThanOrEqual(term=Reference("sold_date"), value=literal(last.isoformat())),
    )


def _remove_unreferenced(table: Table, retention: Retention, now: datetime) -> Removed:
    """Delete the files under the table's location that no live snapshot or kept metadata file
    refers to, once they are older than the grace period."""
    referenced = {path_of(table.metadata_location)}
    referenced |= {path_of(entry.metadata_file) for entry in table.metadata.metadata_log}
    for snapshot in table.snapshots():
        referenced.add(path_of(snapshot.manifest_list))
        for manifest in snapshot.manifests(table.io):
            referenced.add(path_of(manifest.manifest_path))
            referenced |= {
                path_of(entry.data_file.file_path)
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
            }
    location = urlsplit(table.location())
    if not isinstance(table.io, PyArrowFileIO):
        raise TypeError(
            f"removing orphan files lists the table's files through pyarrow; its FileIO is "
            f"{type(table.io).__name__} (set py-io-impl to pyiceberg.io.pyarrow.PyArrowFileIO)"
        )
    filesystem = table.io.fs_by_scheme(location.scheme, location.netloc)
    listing = filesystem.get_file_info(FileSelector(path_of(table.location()), recursive=True))
    found = {info.path: info for info in listing if info.type == FileType.File}
    modified = [(path, info.mtime) for path, info in found.items()]
    removable = orphans(modified, referenced, now, retention.orphan_grace)
    for path in removable:
        table.io.delete(f"{location.scheme}://{path}")
    return Removed(
        files=len(removable),
        bytes=sum(found[path].size for path in removable),
        in_grace=len(set(found) - referenced) - len(removable),
    )


def path_of(uri: str) -> str:
    """A file's path as the file system lists it: `bucket/key` on S3, `/absolute/path` on disk."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return parts.path
    return f"{parts.netloc}{parts.path}"
