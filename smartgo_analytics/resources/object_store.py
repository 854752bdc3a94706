"""Object storage: S3 in production, a directory with the same key layout locally."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from botocore.exceptions import ClientError
from dagster import ConfigurableResource

from smartgo_analytics.layout import check_key
from smartgo_analytics.resources.aws import AwsResource


class ObjectStore(ConfigurableResource):
    """Put and get whole objects by key within one bucket."""

    bucket: str

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> str:
        """Upload a local file (streamed, multipart when large)."""
        raise NotImplementedError

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its version (changed by every write); FileNotFoundError when
        there is none."""
        raise NotImplementedError

    def put_if_version(
        self, key: str, data: bytes, version: str | None, content_type: str = "application/json"
    ) -> bool:
        """Write the object only if it is still at `version` (None: only if there is none), in one
        step no other writer can come between; False, and nothing written, when it is not."""
        raise NotImplementedError

    def versions(self, prefix: str) -> dict[str, str]:
        """Every key under the prefix and its object's version."""
        raise NotImplementedError

    def local_path(self, key: str) -> Path:
        """A local file with the object's bytes: the object itself, or a downloaded copy."""
        raise NotImplementedError

    def release(self, path: Path) -> None:
        """Done with a `local_path`: a downloaded copy is removed, the object itself is kept."""

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A local file with the object's bytes for the block (`local_path`, then `release`)."""
        path = self.local_path(key)
        try:
            yield path
        finally:
            self.release(path)

    def uri(self, key: str) -> str:
        raise NotImplementedError

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under the prefix, sorted."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the object; nothing happens when there is none."""
        raise NotImplementedError


CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey")


class S3ObjectStore(ObjectStore, AwsResource):
    """An S3 bucket. `endpoint_url` points it at anything S3-compatible."""

    def client(self):
        # SigV4 for presigned URLs too (botocore presigns S3 with SigV2 unless told).
        return self.boto3_client("s3", max_pool_connections=64, signature_version="s3v4")

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        self.client().put_object(
            Bucket=self.bucket, Key=check_key(key), Body=data, ContentType=content_type
        )
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client().get_object(Bucket=self.bucket, Key=check_key(key))["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri(key)) from error
            raise

    def put_file(self, key: str, path: Path) -> str:
        self.client().upload_file(str(path), self.bucket, check_key(key))
        return self.uri(key)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            answer = self.client().get_object(Bucket=self.bucket, Key=check_key(key))
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri(key)) from error
            raise
        return answer["Body"].read(), answer["ETag"]

    def put_if_version(
        self, key: str, data: bytes, version: str | None, content_type: str = "application/json"
    ) -> bool:
        # S3's conditional writes: If-Match an ETag, or If-None-Match * for a new object.
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self.client().put_object(
                Bucket=self.bucket,
                Key=check_key(key),
                Body=data,
                ContentType=content_type,
                **condition,
            )
        except ClientError as error:
            # 412: another write came first; 409: one is in progress; NoSuchKey: it was deleted.
            if error.response["Error"]["Code"] in CONDITION_FAILED:
                return False
            raise
        return True

    def versions(self, prefix: str) -> dict[str, str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}

    def local_path(self, key: str) -> Path:
        fd, name = tempfile.mkstemp(prefix="smartgo-", suffix=Path(key).suffix)
        os.close(fd)
        try:
            self.client().download_file(self.bucket, check_key(key), name)
        except ClientError as error:
            Path(name).unlink(missing_ok=True)
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri(key)) from error
            raise
        return Path(name)

    def release(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(self.versions(prefix))

    def delete(self, key: str) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=check_key(key))

    def presigned_url(self, key: str, seconds: int = 300) -> str:
        """A URL that reads the object for `seconds`, signed here (no request is made)."""
        return self.client().generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=seconds
        )


class LocalObjectStore(ObjectStore):
    """`<lake_dir>/<bucket>/<key>`: the S3 layout on a local disk."""

    lake_dir: str

    def _path(self, key: str) -> Path:
        root = (Path(self.lake_dir) / self.bucket).resolve()
        if not key:
            return root
        path = (root / check_key(key)).resolve()
        if not path.is_relative_to(root):  # a symbolic link in the lake, say
            raise ValueError(f"object key escapes the bucket: {key!r}")
        return path

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, as S3 does: a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        with open(path, "rb") as handle:  # the version of the file read, not of a later one
            return handle.read(), _version(os.fstat(handle.fileno()))

    def put_if_version(
        self, key: str, data: bytes, version: str | None, content_type: str = "application/json"
    ) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.parent):  # every conditional writer of the directory, in any process
            try:
                current = _version(path.stat())
            except FileNotFoundError:
                current = None
            if current != version:
                return False
            self.put_bytes(key, data, content_type)
        return True

    def versions(self, prefix: str) -> dict[str, str]:
        root, found = self._path(""), {}
        for key in self.list_keys(prefix):
            try:
                found[key] = _version((root / key).stat())
            except FileNotFoundError:  # deleted since it was listed
                continue
        return found

    def put_file(self, key: str, path: Path) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{target.name}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        return self.uri(key)

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(self.uri(key))
        return path

    def uri(self, key: str) -> str:
        uri = self._path(key).as_uri()
        return uri + "/" if key.endswith("/") else uri

    def list_keys(self, prefix: str) -> list[str]:
        root = self._path("")
        directory = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else root
        if not directory.is_dir():
            return []
        keys = (
            path.relative_to(root).as_posix()
            for path in directory.rglob("*")
            if path.is_file() and not path.name.startswith(".tmp-")
        )
        return sorted(key for key in keys if key.startswith(prefix))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _version(stat: os.stat_result) -> str:
    # Every write replaces the file (a new inode), so inode and time tell versions apart.
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"


@contextmanager
def _locked(directory: Path):
    """An exclusive lock on a directory, held by the kernel for this process until released."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
