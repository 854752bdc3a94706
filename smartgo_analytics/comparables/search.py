"""The question answered: the tenant's index read (similarity.reader), the product's vector or
the picture's, its nearest sold items, and why a product has none (lake)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from smartgo_analytics.comparables.adjust import condition_multipliers
from smartgo_analytics.comparables.answer import Comparables, answered, nearest
from smartgo_analytics.comparables.asked import (
    ComparablesError,
    check_question,
    embed,
    read_picture,
)
from smartgo_analytics.deployment import this_deployment
from smartgo_analytics.lake_directory import LakeDirectory
from smartgo_analytics.layout import index_space
from smartgo_analytics.similarity.index import TenantIndex
from smartgo_analytics.similarity.manifest import Manifest, StaleIndexError
from smartgo_analytics.similarity.reader import IndexReader


class DeploymentResources(dict):
    """The deployment's resources, built when first asked for (Dagster comes with them)."""

    def __missing__(self, name: str):
        self.update(this_deployment().resources())
        return self[name]


def embedder_space(resources) -> str:
    """The index questions are asked of: the resources' embedder's model and length (the
    deployment's, known without building its resources, when they name none)."""
    if "image_embedder" not in resources:
        return this_deployment().index_space()
    embedder = resources["image_embedder"]
    return index_space(embedder.model_id, embedder.dimension)


class Source:
    """Where a question is answered from: the index (`reader`; the embedder's model's and length's),
    the embedder and the fetcher
    (`resources`, the deployment's by default, built when a question first needs one), and why a
    product has no vector (`why_no_vector(product_id)`, by default read from the `iceberg`
    resource's table). Without a reader, the deployment's lake is read: its own files locally;
    from S3, segments kept in `cache_dir` when given (they never change). A server passes a
    KeptIndexReader to keep the indexes open between questions."""

    def __init__(
        self,
        reader: IndexReader | None = None,
        resources: dict | None = None,
        why_no_vector: Callable[[str], str | None] | None = None,
        cache_dir: Path | None = None,
    ):
        self.resources = DeploymentResources() if resources is None else resources
        if reader is None:
            store = this_deployment().lake_files() if resources is None else None
            store = store or self.resources["object_store"]
            reader = IndexReader(
                store,
                None if isinstance(store, LakeDirectory) else cache_dir,
                lambda: embedder_space(self.resources),
            )
        self.reader = reader
        self.why_no_vector = why_no_vector or self._from_the_table

    def _from_the_table(self, product_id: str) -> str | None:
        # Imported here: pyiceberg's catalog takes 0.4 s to import, and most questions are
        # answered from the index alone.
        from smartgo_analytics.lake import no_vector_reason

        return no_vector_reason(self.resources["iceberg"].catalog(), product_id)


def comparables(
    product_id: str | None = None,
    image: str | bytes | None = None,
    tenant: str | None = None,
    category: str | None = None,
    condition: str | None = None,
    k: int = 10,
    *,
    any_category: bool = False,
    source: Source | None = None,
) -> Comparables:
    """The k sold items of the tenant most like a sold product (`product_id`) or a picture (`image`:
    bytes, a file path or an http(s) URL, embedded with the deployment's embedder; a URL is fetched
    through the SSRF-safe fetcher), best first, and the price band they suggest, read from
    `source` (the deployment's by default). Asked by product, the comparables are of the product's
    own category unless `any_category` (or another `category`) is asked, and their prices are
    brought to its condition; `condition` narrows the comparables to one condition."""
    check_question(product_id, image, tenant, category, condition, k)
    source = source or Source()
    try:
        if product_id is not None:
            manifest, index, key = _find_product(source, product_id, tenant)
            vector = index.vector(key)
            query = f"product {product_id}"
            (own,) = index.items([key]).to_pylist()
            if category is None and not any_category:
                category = own["category"]
            asked = {"category": category, "condition": condition or own["condition"]}
        else:
            assert image is not None  # exactly one of the two, checked above
            # A bad picture is told before a bad tenant.
            picture = read_picture(image, lambda: source.resources["image_fetcher"])
            manifest = _tenant_manifest(source.reader, tenant)
            index = _open(source.reader, manifest)
            vector = embed(picture, source.resources["image_embedder"], manifest)
            key, query = None, f"image {image if isinstance(image, str) else '(bytes)'}"
            asked = {"category": category, "condition": condition}
        wanted = {"category": category, "condition": condition}
        items = nearest(index, vector, key, product_id, wanted, k)
        if not items:
            kind = "".join(f" of {name} {value!r}" for name, value in wanted.items() if value)
            wider = " (--any-category asks every category)" if product_id and category else ""
            raise ComparablesError(
                f"tenant {manifest.tenant!r} has no other sold item{kind} with a vector{wider}"
            )
        # The tenant's sales of the bands' window up to its newest indexed day, but the product's
        # own: what its condition is worth is learned from the others.
        as_of = max(map(date.fromisoformat, manifest.days())) + timedelta(days=1)
        multipliers = condition_multipliers(index.all_items(), category, as_of, product_id)
        return answered(manifest.tenant, query, items, manifest.model, asked, multipliers)
    finally:
        source.reader.close()


def _open(reader: IndexReader, manifest: Manifest) -> TenantIndex:
    try:
        manifest.require_current()
    except StaleIndexError as error:
        raise ComparablesError(str(error)) from None
    return reader.open(manifest)


def _tenant_manifest(reader: IndexReader, tenant: str | None) -> Manifest:
    if tenant is None:
        tenants = reader.tenants()
        if len(tenants) != 1:
            known = ", ".join(tenants) or "none yet"
            raise ComparablesError(f"say which tenant with --tenant (indexed: {known})")
        tenant = tenants[0]
    manifest = reader.manifest(tenant)
    if manifest is None or manifest.count == 0:
        raise ComparablesError(f"tenant {tenant!r} has no sold items with a vector in the index")
    return manifest


def _holding(reader: IndexReader, product_id: str, tenants: list[str]):
    """(manifest, index, key) of each of the tenants whose index holds the product."""
    found = []
    for name in tenants:
        manifest = reader.manifest(name)
        if manifest is None:
            continue
        index = _open(reader, manifest)
        key = index.find_product(product_id)
        if key is not None:
            found.append((manifest, index, key))
    return found


def _find_product(source: Source, product_id: str, tenant: str | None):
    reader = source.reader
    found = _holding(reader, product_id, [tenant] if tenant else reader.tenants())
    if len(found) > 1:
        tenants = ", ".join(manifest.tenant for manifest, _, _ in found)
        raise ComparablesError(
            f"product {product_id!r} sold in several tenants ({tenants}): say --tenant"
        )
    if found:
        return found[0]
    if tenant and reader.manifest(tenant) is None:
        raise ComparablesError(f"tenant {tenant!r} has no sold items with a vector in the index")
    others = [other for other in reader.tenants() if other != tenant] if tenant else []
    if _holding(reader, product_id, others):
        raise ComparablesError(f"product {product_id!r} is another tenant's sale, not {tenant!r}'s")
    reason = source.why_no_vector(product_id)
    if reason is not None:
        raise ComparablesError(f"product {product_id!r} has no vector: {reason}")
    where = f" of tenant {tenant!r}" if tenant else ""
    raise ComparablesError(f"unknown product {product_id!r}: no sold item{where} has that id")
