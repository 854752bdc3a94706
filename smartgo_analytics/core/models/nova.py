"""Amazon Nova Multimodal Embeddings (`amazon.nova-2-multimodal-embeddings-v1:0`): PNG, JPEG, GIF
or WebP; the `nova-multimodal-embed-v1` schema's SINGLE_EMBEDDING task in,
`{"embeddings": [{"embeddingType": "IMAGE", "embedding": [...]}]}` out."""

from __future__ import annotations

import base64

import numpy as np

from smartgo_analytics.core.imaging import ImageRule
from smartgo_analytics.core.models.base import EmbeddingModel, image_format
from smartgo_analytics.core.vectors import answer_json, checked_vector


def body(image: bytes, dimension: int) -> bytes:
    # Written out for the reason Titan's is (its base64 is most of the body).
    return b"".join(
        (
            b'{"schemaVersion": "nova-multimodal-embed-v1", "taskType": "SINGLE_EMBEDDING", '
            b'"singleEmbeddingParams": {"embeddingPurpose": "GENERIC_INDEX", '
            b'"embeddingDimension": %d, "image": {"format": "%s", "source": {"bytes": "'
            % (dimension, image_format(image).encode()),
            base64.b64encode(image),
            b'"}}}}',
        )
    )


def vector(answer: bytes, dimension: int) -> np.ndarray:
    payload = answer_json(answer)
    embeddings = payload.get("embeddings") if isinstance(payload, dict) else None
    if not isinstance(embeddings, list) or not embeddings:
        raise ValueError("answer has no 'embeddings'")
    first = embeddings[0]
    if not isinstance(first, dict) or "embedding" not in first:
        raise ValueError("answer's first embedding has no 'embedding'")
    if first.get("embeddingType", "IMAGE") != "IMAGE":
        raise ValueError(f"answer's embedding is of type {str(first['embeddingType'])[:20]!r}")
    return checked_vector(first["embedding"], dimension)


MODEL = EmbeddingModel(
    model_id="amazon.nova-2-multimodal-embeddings-v1:0",
    name="Nova Multimodal Embeddings",
    dimensions=(256, 384, 1024, 3072),
    # Pictures are read to 25 MB inline; a side of 2048 px keeps a photo's request under 4 MB and
    # is more detail than a product's vector draws on.
    images=ImageRule({"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}, max_side=2048),
    body=body,
    vector=vector,
    # Not on the pricing pages this project was built from: Titan G1's figures, until an operator
    # sets EMBEDDING_PRICE_PER_IMAGE from the Bedrock pricing page for the region.
    price_per_image=0.00006,
    batch_price_per_image=0.00003,
)
