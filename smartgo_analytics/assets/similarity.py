"""The similarity index over the sales' vectors, and how good the day's vectors look."""

import tempfile
from pathlib import Path

from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, multi_asset

from smartgo_analytics import checks, pools
from smartgo_analytics.assets.policies import (
    IO_RETRY,
    PRICING,
    disk_full_is_named,
    permanent_errors,
)
from smartgo_analytics.assets.pricing_intelligence import smartgo_sales_iceberg
from smartgo_analytics.layout import index_space, similarity_space_prefix
from smartgo_analytics.partitions import daily_partitions
from smartgo_analytics.resources.dynamodb import ImageVectors
from smartgo_analytics.resources.embeddings import ImageEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.settings import settings
from smartgo_analytics.similarity.manifest import IndexOfAnotherModel
from smartgo_analytics.similarity.store import (
    READ_COLUMNS,
    commit_tenants,
    day_differences,
    index_metadata,
    measure_tenants,
    spool_day,
)
from smartgo_analytics.steps.reembedding import (
    SHADOW_PRICE_ERROR_TOLERANCE,
    IndexConfig,
    legacy_layout,
    other_embedder,
    shadow_day,
    shadow_metadata,
)

INDEX = "similarity_index"
QUALITY = "embedding_quality"


@multi_asset(
    specs=[
        AssetSpec(
            INDEX,
            deps=[smartgo_sales_iceberg],
            group_name=PRICING,
            kinds={"usearch", "s3"},
            owners=settings().asset_owners,
            description="Per embedding model and length, and per tenant, an HNSW index (cosine) "
            "of the sold items' vectors, in segments next to the table: each day's current rows "
            "of the configured model, once",
        ),
        AssetSpec(
            QUALITY,
            deps=[smartgo_sales_iceberg],
            group_name=PRICING,
            kinds={"numpy"},
            owners=settings().asset_owners,
            description="The day's vectors: norms, duplicates from different images, "
            "neighbours that share a category, and drift of the per-category means",
        ),
    ],
    partitions_def=daily_partitions,
    retry_policy=IO_RETRY,
    pool=pools.SIMILARITY_INDEX,
    check_specs=[
        checks.index_matches_table,
        checks.embeddings_look_right,
        checks.shadow_model_no_worse,
    ],
)
def similarity_index(
    context: AssetExecutionContext,
    config: IndexConfig,
    iceberg: IcebergCatalog,
    object_store: ObjectStore,
    image_embedder: ImageEmbedder,
    image_vectors: ImageVectors,
):
    """Put the day's vectors in each tenant's index in place of those it held for the day, then
    measure them against the trailing 30 days; with a shadow model, embed the day by it too, into
    its own index, and compare the two on the day's sales."""
    model, dimension = image_embedder.model_id, image_embedder.dimension
    day = context.partition_time_window.start.date()
    start, end = context.partition_time_window.start, context.partition_time_window.end
    with (
        disk_full_is_named(),
        permanent_errors(IndexOfAnotherModel),
        tempfile.TemporaryDirectory(prefix="smartgo-index-") as directory,
    ):
        batches = iceberg.scan_day_files(start, end, READ_COLUMNS)
        spooled = spool_day(batches, dimension, model, Path(directory))
        manifests = commit_tenants(object_store, spooled, dimension, model, day, Path(directory))
        quality = measure_tenants(object_store, manifests, day, spooled.spools)
    differences = day_differences(
        object_store, list(manifests), day, spooled.with_vector, dimension, model
    )
    space = index_space(model, dimension)
    metadata = index_metadata(spooled, manifests, object_store.uri(similarity_space_prefix(space)))
    metadata |= {"embedding_model": model, "index_space": space}
    for line in legacy_layout(object_store, space, metadata):
        context.log.warning(line)
    context.log.info(
        f"{context.partition_key}: {spooled.vectors} vectors of {len(spooled.spools)} "
        f"tenant(s) indexed; the index holds {metadata['index_vectors']} in all"
    )
    shadowed = None
    if config.shadow_model:
        shadow = other_embedder(image_embedder, config.shadow_model, config.shadow_dimension)
        shadowed = shadow_day(iceberg, object_store, image_vectors, shadow, manifests, day)
        metadata |= shadow_metadata(shadowed)
    yield MaterializeResult(asset_key=INDEX, metadata=metadata)
    yield checks.index_result(differences, spooled.vectors, len(manifests))
    yield checks.shadow_result(shadowed, SHADOW_PRICE_ERROR_TOLERANCE)
    thresholds = settings().embedding_quality
    yield MaterializeResult(
        asset_key=QUALITY,
        metadata=quality.metadata() | {"embedding_model": model, "index_space": space},
    )
    yield checks.quality_result(quality.problems(thresholds), quality.metadata(), thresholds)
