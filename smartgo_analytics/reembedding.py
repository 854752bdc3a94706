"""`reembed_history_job`: the vectors of a range of days' images, of the configured embedding model
and length, made ahead of a backfill: by one Bedrock batch inference job at the batch price when
the images are many, on demand otherwise (`steps/reembedding.py`)."""

from datetime import UTC, date, datetime, timedelta

from dagster import Config, Failure, OpExecutionContext, Output, job, op
from pydantic import Field, field_validator

from smartgo_analytics import pools
from smartgo_analytics.layout import index_space
from smartgo_analytics.resources.bedrock_batch import BatchJobFailed, BedrockBatch
from smartgo_analytics.resources.dynamodb import ImageVectors
from smartgo_analytics.resources.embeddings import ImageEmbedder
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.steps.reembedding import (
    other_embedder,
    range_images,
    reembed,
    shadow_index,
)


class ReembedConfig(Config):
    first_day: str = Field(description="the range's first day, YYYY-MM-DD")
    last_day: str = Field(description="its last day, YYYY-MM-DD (included)")
    model: str = Field(
        default="",
        description="another model than EMBEDDING_MODEL, run in shadow: its vectors kept and "
        "its own index built for the range, the table and the serving index left as they are "
        "(empty: the configured model)",
    )
    dimension: int = Field(default=0, description="the other model's length (0: the configured)")

    @field_validator("first_day", "last_day")
    @classmethod
    def _day(cls, value: str) -> str:
        date.fromisoformat(value)
        return value


@op(
    pool=pools.REEMBEDDING,
    description="Embed the range's images that the image-vector cache lacks for the configured "
    "model: by Bedrock batch inference from BEDROCK_BATCH_MIN_IMAGES images, on demand below",
)
def reembed_images(
    context: OpExecutionContext,
    config: ReembedConfig,
    iceberg: IcebergCatalog,
    object_store: ObjectStore,
    image_embedder: ImageEmbedder,
    image_vectors: ImageVectors,
    bedrock_batch: BedrockBatch,
):
    first, last = date.fromisoformat(config.first_day), date.fromisoformat(config.last_day)
    if last < first:
        raise ValueError(f"last_day {last} is before first_day {first}")
    if not image_vectors.table_name:
        raise ValueError("re-embedding keeps its vectors in IMAGE_VECTORS_TABLE: set it")
    start = datetime.combine(first, datetime.min.time(), UTC)
    images = range_images(iceberg, start, start + timedelta(days=(last - first).days + 1))
    configured = (image_embedder.model_id, image_embedder.dimension)
    if config.model or config.dimension:
        image_embedder = other_embedder(image_embedder, config.model, config.dimension)
    shadow = (image_embedder.model_id, image_embedder.dimension) != configured

    def progress(job: dict) -> None:
        context.log.info(
            f"batch job {job.get('status')}: {job.get('processedRecordCount', 0)} of "
            f"{job.get('totalRecordCount', '?')} records, {job.get('errorRecordCount', 0)} errors"
        )

    name = f"smartgo-reembed-{first}-{last}-{context.run_id[:8]}"
    try:
        done = reembed(
            images,
            object_store,
            image_embedder,
            image_vectors,
            bedrock_batch,
            bedrock_batch.min_images,
            name,
            progress,
        )
    except BatchJobFailed as error:
        raise Failure(description=str(error), allow_retries=False) from None
    context.log.info(
        f"{first}..{last}: {done.images} images, {done.kept_already} kept already, "
        f"{done.by_batch} by batch, {done.on_demand} on demand, {len(done.errors)} without a vector"
    )
    family = getattr(image_embedder, "family", None)  # a Bedrock model's
    batch_price = family.batch_price_per_image if family else 0.0
    metadata = done.metadata(image_embedder.model_id, batch_price, image_embedder.price_per_image)
    if shadow:
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        indexed = shadow_index(
            iceberg,
            object_store,
            image_vectors,
            image_embedder.model_id,
            image_embedder.dimension,
            days,
        )
        metadata["shadow_index_vectors"] = sum(indexed.values())
        metadata["shadow_index_space"] = index_space(
            image_embedder.model_id, image_embedder.dimension
        )
        context.log.info(f"{sum(indexed.values())} vectors in the shadow index of {len(days)} days")
    return Output(None, metadata=metadata)


@job(
    description="Vectors of a range of history by the configured embedding model, ahead of its "
    "backfill (docs/operating.md: changing the embedding model)"
)
def reembed_history_job():
    reembed_images()
