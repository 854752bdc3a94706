"""What maintaining the Iceberg table decides: which snapshots expire, which files are orphans,
which small files are compacted together. Plain functions over plain data."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

_DURATION = re.compile(r"(\d+)([smhd])")
_SIZE = re.compile(r"(\d+)(B|KB|MB|GB)")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def parse_duration(text: str) -> timedelta:
    """`7d`, `36h`, `90m`, `0s`: a whole number and one unit (s, m, h, d)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 7d, 36h, 90m or 0s")
    return timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])


def parse_size(text: str) -> int:
    """`128MB`, `1GB`, `512KB`, `100B`: a whole number and one unit (binary multiples)."""
    match = _SIZE.fullmatch(text.strip().upper())
    if not match:
        raise ValueError(f"{text!r} is not a size like 128MB, 1GB or 512KB")
    return int(match.group(1)) * _BYTES[match.group(2)]


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
