"""`compare_models_job`: the configured embedding model's indexes against another model's, for
the tenants both hold: neighbour agreement, and each model's price error on held-out days. Run it
after the other model's backfill, before switching (docs/operating.md: changing the embedding
model). Its figures are the run's metadata and an observation of `similarity_index`."""

from datetime import date, timedelta

from dagster import (
    AssetKey,
    AssetObservation,
    Config,
    Failure,
    OpExecutionContext,
    Output,
    job,
    op,
)
from pydantic import Field, field_validator

from smartgo_analytics.core.models import model_named
from smartgo_analytics.layout import index_space
from smartgo_analytics.resources.embeddings import ImageEmbedder
from smartgo_analytics.resources.object_store import ObjectStore
from smartgo_analytics.similarity.compare import Comparison, compare_tenant
from smartgo_analytics.similarity.reader import IndexReader
from smartgo_analytics.steps.reembedding import SHADOW_PRICE_ERROR_TOLERANCE


class CompareConfig(Config):
    other_model: str = Field(description="the Bedrock model id to compare with (EMBEDDING_MODEL)")
    other_dimension: int = Field(default=0, description="its vectors' length (0: the current one)")
    held_out_first_day: str = Field(description="first day priced from the days before it")
    held_out_last_day: str = Field(description="last such day (included)")

    @field_validator("held_out_first_day", "held_out_last_day")
    @classmethod
    def _day(cls, value: str) -> str:
        date.fromisoformat(value)
        return value


@op(description="Neighbour agreement and held-out price error of two models' indexes")
def compare_models(
    context: OpExecutionContext,
    config: CompareConfig,
    object_store: ObjectStore,
    image_embedder: ImageEmbedder,
):
    dimension = config.other_dimension or image_embedder.dimension
    model_named(config.other_model).check_dimension(dimension)
    current = index_space(image_embedder.model_id, image_embedder.dimension)
    other = index_space(config.other_model, dimension)
    first = date.fromisoformat(config.held_out_first_day)
    last = date.fromisoformat(config.held_out_last_day)
    held_out = {(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)}
    readers = IndexReader(object_store, space=current), IndexReader(object_store, space=other)
    total, tenants = Comparison(), sorted(set(readers[0].tenants()) & set(readers[1].tenants()))
    try:
        for tenant in tenants:
            mine, theirs = (reader.manifest(tenant) for reader in readers)
            assert mine is not None and theirs is not None
            total.add(compare_tenant(readers[0].open(mine), readers[1].open(theirs), held_out))
    finally:
        for reader in readers:
            reader.close()
    figures = total.figures()
    if not figures["held_out_sales_priced"]:
        raise Failure(
            description=f"no sale of {first}..{last} is in both {current} and {other} with "
            "earlier sales to price it from: backfill the other model over those days and the "
            "ones before",
            allow_retries=False,
        )
    no_worse = (
        figures["price_error_other"]
        <= figures["price_error_current"] * SHADOW_PRICE_ERROR_TOLERANCE
    )
    metadata = {
        **figures,
        "tenants": len(tenants),
        "current_model": image_embedder.model_id,
        "other_model": config.other_model,
        "other_prices_no_worse": no_worse,
    }
    context.log_event(AssetObservation(asset_key=AssetKey("similarity_index"), metadata=metadata))
    (context.log.info if no_worse else context.log.warning)(
        f"{config.other_model} against {image_embedder.model_id}: neighbour agreement "
        f"{figures['neighbour_agreement']}, price error {figures['price_error_other']} against "
        f"{figures['price_error_current']} over {figures['held_out_sales_priced']} held-out sales"
    )
    return Output(None, metadata=metadata)


@job(description="Compare another embedding model's indexes with the configured model's")
def compare_models_job():
    compare_models()
