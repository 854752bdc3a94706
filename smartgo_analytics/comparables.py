"""What similar sold items went for: the k nearest items of a tenant by picture, and the price band
they suggest. `comparables()` is for notebooks; `smartgo-analytics comparables` prints it.

    from smartgo_analytics.comparables import comparables
    found = comparables(product_id="SG-2025-06-01-0042", k=10)
    found.suggested, found.items[0]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from smartgo_analytics.core.imaging import BadImage, prepare_for_titan
from smartgo_analytics.core.price_bands import round_price, weighted_quantiles
from smartgo_analytics.core.sales import IDENTIFIER
from smartgo_analytics.lake_directory import LakeDirectory
from smartgo_analytics.layout import (
    SIMILARITY_PREFIX,
    similarity_manifest_key,
    similarity_tenants,
)
from smartgo_analytics.similarity.index import TenantIndex
from smartgo_analytics.similarity.manifest import Manifest, StaleIndexError
from smartgo_analytics.similarity.segments import segment_keys

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # a picture asked about, as the image fetcher's cap
MAX_LABEL = 200  # characters of a category or condition
MAX_K = 1000  # comparables asked for at once
IDENTIFIER_RULE = "a letter or digit, then up to 127 letters, digits, '.', '_' or '-'"
SHOWN = ("product_id", "category", "brand", "condition", "sold_price", "sold_date", "similarity")
SEARCHED_PER_WANTED = 20  # candidates asked for each item wanted when a category narrows them
MOST_SEARCHED = 4_000


class ComparablesError(Exception):
    """The question cannot be answered; the message says why (unknown product, no vector, ...)."""


class UnusableImage(ComparablesError):
    """The picture asked about is not one the embedder can take."""


@dataclass(frozen=True)
class Comparable:
    product_id: str
    category: str | None
    brand: str | None
    condition: str | None
    sold_price: float
    sold_date: str
    similarity: float
    image_sha256: str | None = (
        None  # its picture's copy: layout.image_key(tenant, product, sha, ext)
    )


@dataclass(frozen=True)
class PriceBand:
    """A similarity-weighted median of the comparables' prices, with their weighted p25 and p75."""

    median: float
    p25: float
    p75: float
    comparables: int


@dataclass(frozen=True)
class Comparables:
    tenant: str
    query: str
    items: list[Comparable]
    suggested: PriceBand

    def rows(self) -> list[dict]:
        return [asdict(item) for item in self.items]


def suggested_band(items: list[Comparable]) -> PriceBand:
    """The comparables' prices, each weighted by its similarity: median, p25 and p75."""
    if not items:
        raise ValueError("a suggested price needs at least one comparable")
    prices = np.array([item.sold_price for item in items])
    weights = np.array([max(item.similarity, 0.0) for item in items])
    p25, median, p75 = weighted_quantiles(prices, weights, (0.25, 0.5, 0.75))
    return PriceBand(round_price(median), round_price(p25), round_price(p75), len(items))


class IndexFiles:
    """The index's files as local paths: the lake's own files locally; from S3, copies kept in a
    cache directory (segments are written once under new names, so a cached copy stays right)."""

    def __init__(self, store, cache_dir: Path | None = None):
        self.store = store
        self.cache_dir = cache_dir
        self._released: list[Path] = []
        self._opened: list[TenantIndex] = []

    def manifest(self, tenant: str) -> Manifest | None:
        try:
            return Manifest.from_json(self.store.get_bytes(similarity_manifest_key(tenant)))
        except FileNotFoundError:
            return None

    def tenants(self) -> list[str]:
        return similarity_tenants(self.store.list_keys(f"{SIMILARITY_PREFIX}/"))

    def path(self, key: str) -> Path:
        if self.cache_dir is None:
            path = self.store.local_path(key)
            self._released.append(path)
            return path
        cached = self.cache_dir / hashlib.sha256(self.store.uri(key).encode()).hexdigest()
        if not cached.exists():
            downloaded = self.store.local_path(key)
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(downloaded, f"{cached}.part")
                os.replace(f"{cached}.part", cached)
            finally:
                self.store.release(downloaded)
        return cached

    def open(self, manifest: Manifest) -> TenantIndex:
        try:
            manifest.require_current()
        except StaleIndexError as error:
            raise ComparablesError(str(error)) from None
        paths = {
            s.name: tuple(self.path(key) for key in segment_keys(manifest.tenant, s.name))
            for s in manifest.segments
        }
        self._opened.append(TenantIndex(manifest, paths))
        return self._opened[-1]

    def close(self) -> None:
        for index in self._opened:
            index.close()
        for path in self._released:
            self.store.release(path)


class KeptIndexFiles(IndexFiles):
    """IndexFiles that keep each tenant's index open across questions (a server's): a tenant's
    index is opened again only when its manifest names other segments (segments are written once,
    under new names). `close_all()` at the end."""

    def __init__(self, store, cache_dir: Path | None = None):
        super().__init__(store, cache_dir)
        self._kept: dict[str, tuple[tuple[str, ...], TenantIndex]] = {}
        self._lock = threading.Lock()

    def open(self, manifest: Manifest) -> TenantIndex:
        names = tuple(segment.name for segment in manifest.segments)
        with self._lock:
            kept = self._kept.get(manifest.tenant)
            if kept is None or kept[0] != names:
                index = super().open(manifest)
                # Kept here alone: an index replaced by a newer one is let go (its maps and
                # threads with it) once the questions still using it are answered.
                self._opened.remove(index)
                self._kept[manifest.tenant] = (names, index)
            return self._kept[manifest.tenant][1]

    def close(self) -> None:
        """Nothing: the indexes stay open for the next question."""

    def close_all(self) -> None:
        for _, index in self._kept.values():
            index.close()
        super().close()


def comparables(
    product_id: str | None = None,
    image: str | bytes | None = None,
    tenant: str | None = None,
    category: str | None = None,
    condition: str | None = None,
    k: int = 10,
    *,
    resources: dict | None = None,
    why_no_vector: Callable[[str], str | None] | None = None,
    cache_dir: Path | None = None,
    index_files: IndexFiles | None = None,
) -> Comparables:
    """The k sold items of the tenant most like a sold product (`product_id`) or a picture (`image`:
    bytes, a file path or an http(s) URL, embedded with the deployment's embedder; a URL is fetched
    through the SSRF-safe fetcher), optionally of one category and condition, best first, and the price band
    they suggest. `resources` defaults to the deployment's. Why a product has no vector is read
    from the table (`why_no_vector(product_id)`, by default through the `iceberg` resource).
    Segments read from S3 are kept in `cache_dir` when given (they never change), else fetched
    for the call. A server passes `index_files` (KeptIndexFiles) to keep the indexes open."""
    if (product_id is None) == (image is None):
        raise ComparablesError("give exactly one of a product id or an image")
    if k < 1:
        raise ComparablesError(f"k must be at least 1, got {k}")
    if k > MAX_K:
        raise ComparablesError(f"k must be at most {MAX_K}, got {k}")
    _check_arguments(product_id, tenant, category, condition)
    if index_files is not None:
        store = index_files.store
    elif resources is None:
        store = local_lake() or _deployment()["object_store"]
    else:
        store = resources["object_store"]
    resources = DeploymentResources() if resources is None else resources
    files = index_files or IndexFiles(
        store, None if isinstance(store, LakeDirectory) else cache_dir
    )
    try:
        if product_id is not None:
            why = why_no_vector or (
                lambda pid: no_vector_reason(resources["iceberg"].catalog(), pid)
            )
            manifest, index, key = _find_product(files, product_id, tenant, why)
            vector = index.vector(key)
            query = f"product {product_id}"
        else:
            assert image is not None  # exactly one of the two, checked above
            picture = read_picture(image, resources)  # a bad picture is told before a bad tenant
            manifest = _tenant_manifest(files, tenant)
            index = files.open(manifest)
            vector = _embed(picture, resources, manifest.dimension)
            key, query = None, f"image {image if isinstance(image, str) else '(bytes)'}"
        wanted = {"category": category, "condition": condition}
        items = _nearest(index, vector, key, product_id, wanted, k)
        if not items:
            kind = "".join(f" of {name} {value!r}" for name, value in wanted.items() if value)
            raise ComparablesError(
                f"tenant {manifest.tenant!r} has no other sold item{kind} with a vector"
            )
        return Comparables(manifest.tenant, query, items, suggested_band(items))
    finally:
        files.close()


def local_lake() -> LakeDirectory | None:
    """The local deployment's lake, read as files without building the Dagster resources (the
    command so answers in a fraction of the time: Dagster's import alone takes about a second; the
    `comparables_page` benchmark's first answer); None in production."""
    from smartgo_analytics.local.stack import LOCAL_BUCKET, smartgo_home
    from smartgo_analytics.settings import settings

    config = settings()
    if config.deployment != "local":
        return None
    return LakeDirectory(smartgo_home(config.smartgo_home) / "lake" / LOCAL_BUCKET)


def _deployment() -> dict:
    from smartgo_analytics.deployment import resources_for_deployment

    return resources_for_deployment()


class DeploymentResources(dict):
    """The deployment's resources, built when first asked for."""

    def __missing__(self, name: str):
        self.update(_deployment())
        return self[name]


def _tenant_manifest(files: IndexFiles, tenant: str | None) -> Manifest:
    if tenant is None:
        tenants = files.tenants()
        if len(tenants) != 1:
            known = ", ".join(tenants) or "none yet"
            raise ComparablesError(f"say which tenant with --tenant (indexed: {known})")
        tenant = tenants[0]
    manifest = files.manifest(tenant)
    if manifest is None or manifest.count == 0:
        raise ComparablesError(f"tenant {tenant!r} has no sold items with a vector in the index")
    return manifest


def no_vector_reason(catalog, product_id: str) -> str | None:
    """Why a sold product has no vector, from the table; None when the table has no such sale."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import EqualTo, Reference
    from pyiceberg.expressions.literals import literal

    from smartgo_analytics.core.sales_table import IDENTIFIER

    try:
        table = catalog.load_table(IDENTIFIER)
    except NoSuchTableError:
        return None
    scan = table.scan(
        row_filter=EqualTo(term=Reference("product_id"), value=literal(product_id)),
        selected_fields=("embedding_error",),
    )
    errors = scan.to_arrow().column("embedding_error").to_pylist()
    if not errors:
        return None
    return errors[-1] or "its sale is not in the index yet (materialise similarity_index)"


def _find_product(files: IndexFiles, product_id: str, tenant: str | None, why_no_vector):
    found = []
    for name in [tenant] if tenant else files.tenants():
        manifest = files.manifest(name)
        if manifest is None:
            continue
        index = files.open(manifest)
        key = index.find_product(product_id)
        if key is not None:
            found.append((manifest, index, key))
    if len(found) > 1:
        tenants = ", ".join(manifest.tenant for manifest, _, _ in found)
        raise ComparablesError(
            f"product {product_id!r} sold in several tenants ({tenants}): say --tenant"
        )
    if found:
        return found[0]
    if tenant and files.manifest(tenant) is None:
        raise ComparablesError(f"tenant {tenant!r} has no sold items with a vector in the index")
    if tenant and any(
        (manifest := files.manifest(other)) is not None
        and files.open(manifest).find_product(product_id) is not None
        for other in files.tenants()
        if other != tenant
    ):
        raise ComparablesError(f"product {product_id!r} is another tenant's sale, not {tenant!r}'s")
    reason = why_no_vector(product_id)
    if reason is not None:
        raise ComparablesError(f"product {product_id!r} has no vector: {reason}")
    where = f" of tenant {tenant!r}" if tenant else ""
    raise ComparablesError(f"unknown product {product_id!r}: no sold item{where} has that id")


def _check_arguments(product_id, tenant, category, condition) -> None:
    """ComparablesError, in one line, for an argument no sold item could have."""
    if tenant is not None and not (isinstance(tenant, str) and IDENTIFIER.fullmatch(tenant)):
        raise ComparablesError(f"{_shown(tenant)} is not a tenant id ({IDENTIFIER_RULE})")
    if product_id is not None and not (
        isinstance(product_id, str) and IDENTIFIER.fullmatch(product_id)
    ):
        raise ComparablesError(f"unknown product {_shown(product_id)} (ids are {IDENTIFIER_RULE})")
    for name, value in (("category", category), ("condition", condition)):
        if value is not None and (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > MAX_LABEL
            or any(ord(c) < 32 or ord(c) == 127 for c in value)
        ):
            raise ComparablesError(f"{_shown(value)} is not a {name} (1 to {MAX_LABEL} characters)")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def read_image_file(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """A picture from a regular file of at most `max_bytes`, read with that bound; a device, a
    FIFO or a directory is refused without waiting on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        raise ComparablesError(
            f"cannot read {_shown(path)}: {getattr(error, 'strerror', None) or error}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ComparablesError(f"{_shown(path)} is not a regular file")
        if info.st_size > max_bytes:
            raise ComparablesError(
                f"{_shown(path)} is {info.st_size} bytes, over the {max_bytes} byte limit"
            )
        chunks, size = [], 0
        while size <= max_bytes and (chunk := os.read(fd, min(2**20, max_bytes + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:  # a file that refuses reads: /proc/self/mem, a failing disk
        raise ComparablesError(f"cannot read {_shown(path)}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise ComparablesError(f"{_shown(path)} grew past the {max_bytes} byte limit while read")
    return b"".join(chunks)


def read_picture(image: str | bytes, resources: dict) -> bytes:
    """The picture's bytes, at most MAX_IMAGE_BYTES: given, fetched from an http(s) URL (the
    fetcher's cap is the same), or read from a file."""
    if isinstance(image, bytes):
        if len(image) > MAX_IMAGE_BYTES:
            raise ComparablesError(
                f"the picture is {len(image)} bytes, over the {MAX_IMAGE_BYTES} byte limit"
            )
        return image
    if image.startswith(("http://", "https://")):
        from smartgo_analytics.resources.images import ImageFetchError

        try:
            return resources["image_fetcher"].fetch(image).data
        except ImageFetchError as error:
            raise ComparablesError(f"cannot fetch {_shown(image)}: {error}") from None
    return read_image_file(image)


def _embed(data: bytes, resources: dict, dimension: int) -> np.ndarray:
    from smartgo_analytics.resources.embeddings import EmbeddingError

    try:
        prepared = prepare_for_titan(data)
    except BadImage as error:
        raise UnusableImage(f"not a usable image: {error}") from None
    embedder = resources["image_embedder"]
    if embedder.dimension != dimension:
        raise ComparablesError(
            f"the index holds {dimension}-d vectors; the embedder makes {embedder.dimension}-d ones"
        )
    try:
        return embedder.embed(prepared.data)
    except EmbeddingError as error:
        raise ComparablesError(f"the picture could not be embedded: {error}") from None


def _nearest(index: TenantIndex, vector, key, product_id, kind: dict, k) -> list[Comparable]:
    """The k nearest items other than the query's own sales, of the kind (category, condition) asked."""
    kind = {name: value for name, value in kind.items() if value is not None}
    wanted = k * SEARCHED_PER_WANTED if kind else k
    while True:
        searched = min(wanted + 1, len(index))
        keys, similarities = index.search(vector, searched)
        keys, similarities = keys[0], similarities[0]
        items = index.items(keys[keys != 0]).to_pylist()
        similarity = dict(zip(keys.tolist(), similarities.tolist(), strict=True))
        chosen = [
            item
            for item in items
            if item["key"] != key
            and item["product_id"] != product_id
            and all(item[name] == value for name, value in kind.items())
        ][:k]
        if len(chosen) >= k or searched >= len(index) or wanted >= MOST_SEARCHED:
            break
        wanted *= 4
    return [_comparable(item, similarity[item["key"]]) for item in chosen]


def _comparable(item: dict, similarity: float) -> Comparable:
    sold: datetime = item["sold_date"]
    return Comparable(
        item["product_id"],
        item["category"],
        item["brand"],
        item["condition"],
        float(item["sold_price"]),
        sold.date().isoformat(),
        round(similarity, 4),
        item.get("image_sha256"),
    )
