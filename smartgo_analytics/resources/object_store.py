"""Object storage: S3 in production, a directory with the same key layout locally."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from botocore.exceptions import ClientError
from dagster import ConfigurableResource

from smartgo_analytics.lake_directory import LakeDirectory
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

    def key_of(self, uri: str) -> str:
        """The key of an object by the URI `uri` gave it (a table row's `image_s3_key`);
        FileNotFoundError for one of another store."""
        root = self.uri("")
        if not uri.startswith(root) or uri == root:
            raise FileNotFoundError(f"{uri[:200]} is not in {root}")
        return check_key(uri[len(root) :])

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
    """`<lake_dir>/<bucket>/<key>`: the S3 layout on a local disk (a `LakeDirectory`)."""

    lake_dir: str

    @property
    def directory(self) -> LakeDirectory:
        return LakeDirectory(Path(self.lake_dir) / self.bucket)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        return self.directory.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.directory.get_bytes(key)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self.directory.get_versioned(key)

    def put_if_version(
        self, key: str, data: bytes, version: str | None, content_type: str = "application/json"
    ) -> bool:
        return self.directory.put_if_version(key, data, version)

    def versions(self, prefix: str) -> dict[str, str]:
        return self.directory.versions(prefix)

    def put_file(self, key: str, path: Path) -> str:
        return self.directory.put_file(key, path)

    def local_path(self, key: str) -> Path:
        return self.directory.local_path(key)

    def uri(self, key: str) -> str:
        return self.directory.uri(key)

    def list_keys(self, prefix: str) -> list[str]:
        return self.directory.list_keys(prefix)

    def delete(self, key: str) -> None:
        self.directory.delete(key)
