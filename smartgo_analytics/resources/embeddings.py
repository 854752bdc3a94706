"""Image embeddings: Amazon Bedrock Titan in production, a local visual embedder otherwise."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
from botocore.exceptions import ClientError
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from smartgo_analytics.core.imaging import visual_features
from smartgo_analytics.core.retry import call_with_retries
from smartgo_analytics.resources.aws import AwsResource

TITAN_IMAGE_MODEL = "amazon.titan-embed-image-v1"
TITAN_DIMENSIONS = (256, 384, 1024)
# On-demand price of one Titan Multimodal Embeddings image input, USD.
TITAN_PRICE_PER_IMAGE = 0.00006


class EmbeddingError(Exception):
    """The model gave no usable vector; the message is the per-sale reason."""


class ImageEmbedder(ConfigurableResource):
    """Turns image bytes (PNG or JPEG) into one vector of `dimension` floats."""

    dimension: int = Field(default=1024, description="vector length")
    max_concurrency: int = Field(default=16, description="embedding calls in flight at once")

    @property
    def model_id(self) -> str:
        raise NotImplementedError

    @property
    def price_per_image(self) -> float:
        return 0.0

    def embed(self, image: bytes) -> np.ndarray:
        """A float32 vector of `dimension` values, or EmbeddingError."""
        raise NotImplementedError


class LocalVisualEmbedder(ImageEmbedder):
    """Deterministic visual features (colour layout and edges), same interface as Titan."""

    @property
    def model_id(self) -> str:
        return f"local-visual-features-v1/{self.dimension}"

    def embed(self, image: bytes) -> np.ndarray:
        return visual_features(image, self.dimension)


class TitanEmbedder(ImageEmbedder, AwsResource):
    """`amazon.titan-embed-image-v1` through one shared bedrock-runtime client with adaptive
    retries (throttling), a bound on calls in flight, and its own retry of ModelTimeoutException."""

    titan_model_id: str = Field(default=TITAN_IMAGE_MODEL)
    model_timeout_retries: int = 3
    model_timeout_backoff_s: float = 1.0
    max_attempts: int = Field(
        default=10, description="botocore attempts per call, throttling included"
    )

    _slots: threading.BoundedSemaphore | None = PrivateAttr(default=None)

    @property
    def model_id(self) -> str:
        return self.titan_model_id

    @property
    def price_per_image(self) -> float:
        return TITAN_PRICE_PER_IMAGE

    def setup_for_execution(self, context) -> None:
        if self.dimension not in TITAN_DIMENSIONS:
            raise ValueError(
                f"TITAN_EMBEDDING_DIMENSION must be one of {TITAN_DIMENSIONS}, got {self.dimension}"
            )

    def _client(self):
        client = self.boto3_client(
            "bedrock-runtime",
            retries={"mode": "adaptive", "max_attempts": self.max_attempts},
            max_pool_connections=max(self.max_concurrency, 10),
            read_timeout=60,
        )
        if self._slots is None:
            with self._clients_lock:  # one bound for every thread, however many start at once
                if self._slots is None:
                    self._slots = threading.BoundedSemaphore(self.max_concurrency)
        return client

    def embed(self, image: bytes) -> np.ndarray:
        client = self._client()
        body = json.dumps(
            {
                "inputImage": base64.b64encode(image).decode("ascii"),
                "embeddingConfig": {"outputEmbeddingLength": self.dimension},
            }
        )

        def invoke() -> dict:
            with self._slots:
                response = client.invoke_model(
                    modelId=self.titan_model_id,
                    body=body,
                    contentType="application/json",
                    accept="application/json",
                )
            return json.loads(response["body"].read())

        def is_model_timeout(error: Exception) -> bool:
            return (
                isinstance(error, ClientError)
                and error.response["Error"]["Code"] == "ModelTimeoutException"
            )

        try:
            payload = call_with_retries(
                invoke, is_model_timeout, self.model_timeout_retries, self.model_timeout_backoff_s
            )
        except ClientError as error:
            code = error.response["Error"]["Code"]
            raise EmbeddingError(
                f"Bedrock {code}: {error.response['Error'].get('Message', '')[:120]}"
            ) from None
        vector = payload.get("embedding")
        if not isinstance(vector, list):
            raise EmbeddingError("Bedrock response has no embedding")
        if len(vector) != self.dimension:
            raise EmbeddingError(
                f"Bedrock returned {len(vector)} values, asked for {self.dimension}"
            )
        try:
            return np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise EmbeddingError("Bedrock embedding holds non-numbers") from None
