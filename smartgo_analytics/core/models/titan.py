"""Amazon Titan Multimodal Embeddings G1 (`amazon.titan-embed-image-v1`): PNG or JPEG up to
2048 x 2048 pixels; `{"inputImage", "embeddingConfig": {"outputEmbeddingLength"}}` in,
`{"embedding": [...]}` out."""

from __future__ import annotations

import base64

from smartgo_analytics.core.imaging import ImageRule
from smartgo_analytics.core.models.base import EmbeddingModel
from smartgo_analytics.core.vectors import vector_from_answer


def body(image: bytes, dimension: int) -> bytes:
    # Written out rather than json.dumps'd: base64 needs no escaping, and scanning a photo's
    # megabyte of it for characters to escape costs more than the rest of the call.
    return b"".join(
        (
            b'{"inputImage": "',
            base64.b64encode(image),
            b'", "embeddingConfig": {"outputEmbeddingLength": %d}}' % dimension,
        )
    )


MODEL = EmbeddingModel(
    model_id="amazon.titan-embed-image-v1",
    name="Titan Multimodal Embeddings G1",
    dimensions=(256, 384, 1024),
    images=ImageRule({"JPEG": "jpg", "PNG": "png"}, max_side=2048),
    body=body,
    vector=vector_from_answer,
    # $0.00006 an image input on demand (us-east-1); batch inference at 50% of the on-demand price.
    price_per_image=0.00006,
    batch_price_per_image=0.00003,
)
