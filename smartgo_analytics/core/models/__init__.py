"""The embedding models the pipeline can call, by Bedrock model id. A new family is a module like
`titan.py` and one entry here."""

from __future__ import annotations

from smartgo_analytics.core.models import nova, titan
from smartgo_analytics.core.models.base import EmbeddingModel

MODELS: dict[str, EmbeddingModel] = {model.model_id: model for model in (titan.MODEL, nova.MODEL)}
DEFAULT_MODEL = titan.MODEL


def local_stand_in(model_id: str, dimension: int) -> str:
    """The id of the local visual embedder's model standing in for `model_id`: the default
    model's is the features as they are, another's the same features in another basis."""
    if model_id == DEFAULT_MODEL.model_id:
        return f"local-visual-features-v1/{dimension}"
    return f"local-visual-features-v1-as-{model_id}/{dimension}"


def model_named(model_id: str) -> EmbeddingModel:
    """The model of this id; ValueError naming the ones there are."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise ValueError(
            f"no embedding model {model_id[:80]!r}; the pipeline calls {', '.join(MODELS)}"
        ) from None
