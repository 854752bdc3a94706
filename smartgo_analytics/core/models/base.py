"""What the pipeline knows of an embedding model: its id, the vector lengths it makes, the pictures
it takes, its request body and answer, and its price. A model family is one module that makes one
`EmbeddingModel` (`titan.py`, `nova.py`); `core/models/__init__.py` lists them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from smartgo_analytics.core.imaging import ImageRule


@dataclass(frozen=True)
class EmbeddingModel:
    model_id: str  # Bedrock's model id, and the `embedding_model` of the table's rows
    name: str  # for people
    dimensions: tuple[int, ...]
    images: ImageRule
    # The InvokeModel body for a picture (PNG, JPEG, or a format of `images`) and a length.
    body: Callable[[bytes, int], bytes]
    # The answer's vector of that length, or ValueError with the reason.
    vector: Callable[[bytes, int], np.ndarray]
    price_per_image: float  # USD, on demand
    batch_price_per_image: float  # USD, by batch inference

    def check_dimension(self, dimension: int) -> None:
        if dimension not in self.dimensions:
            raise ValueError(
                f"{self.name} ({self.model_id}) makes vectors of "
                f"{', '.join(map(str, self.dimensions))} values, not {dimension}"
            )


# The first bytes of each format a model may be sent, and the name the request gives it.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)


def image_format(image: bytes) -> str:
    """png, jpeg, gif or webp, from the picture's first bytes; ValueError for another."""
    for signature, name in _SIGNATURES:
        if image.startswith(signature):
            return name
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "webp"
    raise ValueError("the picture is not PNG, JPEG, GIF or WebP")
