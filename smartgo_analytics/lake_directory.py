"""A lake directory: objects as files under one root, by key, the S3 layout on a local disk.

Plain (no Dagster): the local object store writes through it, and the `comparables` command and the
web page read the local lake through it without building the deployment's resources.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from smartgo_analytics.layout import check_key


class LakeDirectory:
    """Objects as files under `root`, by key: the S3 layout on a local disk, written as S3 writes
    (whole objects, replaced at once)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The key's file (which need not exist); ValueError for a key that leaves the root."""
        root = self.root.resolve()
        if not key:
            return root
        path = (root / check_key(key)).resolve()
        if not path.is_relative_to(root):  # a symbolic link in the lake, say
            raise ValueError(f"object key escapes the bucket: {key!r}")
        return path

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, as S3 does: a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            _stamp_after(tmp, path)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        path = self.path(key)
        with open(path, "rb") as handle:  # the version of the file read, not of a later one
            return handle.read(), _version(os.fstat(handle.fileno()))

    def put_if_version(self, key: str, data: bytes, version: str | None) -> bool:
        """Write only if the file is still at `version` (None: only if there is none)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.parent):  # every conditional writer of the directory, in any process
            try:
                current = _version(path.stat())
            except FileNotFoundError:
                current = None
            if current != version:
                return False
            self.put_bytes(key, data)
        return True

    def versions(self, prefix: str) -> dict[str, str]:
        root, found = self.path(""), {}
        for key in self.list_keys(prefix):
            try:
                found[key] = _version((root / key).stat())
            except FileNotFoundError:  # deleted since it was listed
                continue
        return found

    def put_file(self, key: str, path: Path) -> str:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{target.name}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        return self.uri(key)

    def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(self.uri(key))
        return path

    def release(self, path: Path) -> None:
        """Nothing: `local_path` is the object's own file."""

    def uri(self, key: str) -> str:
        uri = self.path(key).as_uri()
        return uri + "/" if key.endswith("/") else uri

    def list_keys(self, prefix: str) -> list[str]:
        root = self.path("")
        directory = self.path(prefix.rsplit("/", 1)[0]) if "/" in prefix else root
        if not directory.is_dir():
            return []
        keys = (
            path.relative_to(root).as_posix()
            for path in directory.rglob("*")
            if path.is_file() and not path.name.startswith(".tmp-")
        )
        return sorted(key for key in keys if key.startswith(prefix))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _version(stat: os.stat_result) -> str:
    # Every write replaces the file (a new inode) and stamps it later than the one it replaces
    # (`_stamp_after`), so inode, time and size tell versions apart.
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"


def _stamp_after(new: str, old: Path) -> None:
    """Give the file about to replace `old` a modification time to the nanosecond, later than
    `old`'s: the file system's own is of its clock's tick, and a freed inode is used again at
    once, so two files of the same size written in one tick would otherwise carry one version (a
    stale conditional write would pass)."""
    try:
        before = old.stat().st_mtime_ns
    except FileNotFoundError:
        before = 0
    now = max(time.time_ns(), before + 1)
    os.utime(new, ns=(now, now))


@contextmanager
def _locked(directory: Path):
    """An exclusive lock on a directory, held by the kernel for this process until released."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
