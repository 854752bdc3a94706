"""Every object-store key the project writes, in one place, and what makes a key safe; and the
Iceberg tables' names."""

from __future__ import annotations

import re
from collections.abc import Iterable

from smartgo_analytics.core.sales import VALID_ID

NAMESPACE = "pricing_intelligence"
SALES_TABLE = f"{NAMESPACE}.smartgo_sales"
PRICE_BANDS_TABLE = f"{NAMESPACE}.price_bands"
IMAGE_PREFIX = "images/smartgo"
STAGING_PREFIX = "staging"
MAX_KEY_BYTES = 1024  # S3's limit
_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXTENSION = re.compile(r"[a-z0-9]{1,8}")


class UnsafeKey(ValueError):
    """A key that would leave its prefix or change its shape; the store refuses it."""


def check_key(key: str) -> str:
    """The key, if every segment is a plain name: no empty, '.' or '..' segment, no leading '/',
    no backslash or control character, at most 1,024 bytes. Otherwise UnsafeKey."""
    segments = key.split("/")
    if key.endswith("/"):
        segments = segments[:-1]  # a prefix
    if (
        not key
        or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
        or any(segment in ("", ".", "..") for segment in segments)
        or any(char == "\\" or ord(char) < 32 or ord(char) == 127 for char in key)
    ):
        raise UnsafeKey(f"unsafe object key {key[:120]!r}")
    return key


def image_key(tenant_id: str, product_id: str, sha256: str, extension: str) -> str:
    """`images/smartgo/<tenant>/<product>/<sha256>.<ext>`, `ext` the file's own format (`core/imaging.
    SOURCE_FORMATS`: jpg, png, webp, gif, ...); UnsafeKey for a part that is not one."""
    if not (
        VALID_ID.fullmatch(tenant_id)
        and VALID_ID.fullmatch(product_id)
        and _SHA256.fullmatch(sha256)
        and _EXTENSION.fullmatch(extension)
    ):
        raise UnsafeKey(f"no image key for tenant {tenant_id[:40]!r}, product {product_id[:40]!r}")
    return f"{IMAGE_PREFIX}/{tenant_id}/{product_id}/{sha256}.{extension}"


def product_images_prefix(tenant_id: str, product_id: str) -> str:
    """Where a product's image copies are (`image_key`); UnsafeKey for a part that is not a key's."""
    return check_key(f"{IMAGE_PREFIX}/{tenant_id}/{product_id}/")


def quicksight_dataset_prefix(quicksight_prefix: str, dataset: str) -> str:
    return f"{quicksight_prefix}{dataset}/"


def quicksight_export_key(quicksight_prefix: str, dataset: str, date: str) -> str:
    return f"{quicksight_dataset_prefix(quicksight_prefix, dataset)}{date}.json"


def quicksight_month_prefix(quicksight_prefix: str, dataset: str) -> str:
    return f"{quicksight_prefix}months/{dataset}/"


def quicksight_month_key(quicksight_prefix: str, dataset: str, month: str) -> str:
    """A finished month of a dataset in one file: its days' lines, day by day."""
    return f"{quicksight_month_prefix(quicksight_prefix, dataset)}{month}.json"


def quicksight_manifest_key(quicksight_prefix: str, dataset: str) -> str:
    return f"{quicksight_prefix}manifests/{dataset}.json"


def quarantine_key(asset: str, date: str) -> str:
    """A day's rows an asset set aside (product id and reason), as Parquet."""
    return f"{STAGING_PREFIX}/quarantine/{asset}/{date}.parquet"


SIMILARITY_PREFIX = "similarity_index"
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def index_space(model: str, dimension: int) -> str:
    """The name of one model's index of one vector length: `<model>.<dimension>d`, the characters of
    the model id that are not a key's plain ones as '-' (`amazon.nova-2-multimodal-embeddings-v1-0
    .1024d`). Two models, or two lengths, never share an index."""
    return f"{_NOT_IN_A_NAME.sub('-', model).strip('-.')[:200]}.{dimension}d"


def similarity_space_prefix(space: str) -> str:
    return check_key(f"{SIMILARITY_PREFIX}/{space}/")


def similarity_manifest_key(space: str, tenant: str) -> str:
    """A tenant's index of one model and length: its segments and the vectors of each day."""
    return f"{SIMILARITY_PREFIX}/{space}/{tenant}/manifest.json"


def similarity_tenants(keys: Iterable[str], space: str) -> list[str]:
    """The tenants whose index manifests of this space are among these object keys."""
    return [parts[2] for parts in _manifest_keys(keys) if parts[1] == space]


def similarity_spaces(keys: Iterable[str]) -> list[str]:
    """The index spaces (`index_space`) holding a tenant's manifest among these object keys."""
    return sorted({parts[1] for parts in _manifest_keys(keys)})


def legacy_index_tenants(store) -> list[str]:
    """Tenants with an index in the layout before one index a model
    (`similarity_index/<tenant>/manifest.json`), which nothing reads any more."""
    keys = store.list_keys(f"{SIMILARITY_PREFIX}/")
    return sorted(
        parts[1]
        for parts in (key.split("/") for key in keys)
        if len(parts) == 3 and parts[2] == "manifest.json"
    )


def _manifest_keys(keys: Iterable[str]) -> list[list[str]]:
    parts = (key.split("/") for key in keys)
    return [
        p for p in parts if len(p) == 4 and p[0] == SIMILARITY_PREFIX and p[3] == "manifest.json"
    ]


def similarity_segment_key(space: str, tenant: str, name: str, suffix: str) -> str:
    """One file of a segment of a tenant's index (`.usearch`, `.parquet`, `.f16`)."""
    return f"{SIMILARITY_PREFIX}/{space}/{tenant}/{name}{suffix}"


def similarity_category_sums_key(space: str, tenant: str, day_iso: str) -> str:
    """A day's per-category vector sums and counts, for drift against the trailing days."""
    return f"{SIMILARITY_PREFIX}/{space}/{tenant}/category_sums/{day_iso}.parquet"


def staged_records_key(asset: str, date: str) -> str:
    """A day's records as an asset stages them for the QuickSight datasets, as NDJSON."""
    return f"{STAGING_PREFIX}/{asset}/{date}.ndjson"


def daily_metrics_key(date: str) -> str:
    return staged_records_key("dynamodb_daily_metrics", date)


def asset_output_key(asset_path: list[str], partition_key: str | None) -> str:
    name = "/".join(asset_path)
    return f"{STAGING_PREFIX}/{name}/{partition_key or 'latest'}.parquet"
