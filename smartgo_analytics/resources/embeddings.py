"""Image embeddings: an Amazon Bedrock model in production (`core/models`: Titan Multimodal
Embeddings G1 by default, or Nova Multimodal Embeddings), a local visual embedder otherwise."""

from __future__ import annotations

import threading
import zlib
from collections import Counter

import numpy as np
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ReadTimeoutError,
)
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from smartgo_analytics.core.imaging import BadImage, ImageRule, visual_features
from smartgo_analytics.core.models import DEFAULT_MODEL, local_stand_in, model_named
from smartgo_analytics.core.models.base import EmbeddingModel
from smartgo_analytics.core.outage import Transient
from smartgo_analytics.core.pacing import Pace
from smartgo_analytics.core.retry import call_with_retries
from smartgo_analytics.resources.aws import AwsResource

MAX_ANSWER_BYTES = 1024 * 1024  # an answer's body read at most: 40 times a 1024-d vector's JSON
# Errors of an endpoint that does not answer: a connection refused, reset or left silent, or an
# answer cut short (a body shorter than its length, a broken stream).
UNANSWERED = (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    HTTPClientError,
    IncompleteReadError,
)
# Answers that say "not now" rather than "not this image".
UNAVAILABLE_CODES = {
    "ThrottlingException",
    "ServiceUnavailableException",
    "InternalServerException",
    "ModelNotReadyException",
    "ModelTimeoutException",
    "InternalFailure",
}


# What bedrock-runtime says a call was charged, counted against the model's tokens-per-minute quota.
TOKEN_COUNT_HEADERS = ("x-amzn-bedrock-input-token-count", "x-amzn-bedrock-output-token-count")


def charged_tokens(status: int, headers) -> int | None:
    """The tokens an InvokeModel answer says its call was charged: None for an error, which says
    nothing of a charge; 0 for a success that names none."""
    if not 200 <= status < 300:
        return None
    counts = (str(headers.get(name, "")).strip() for name in TOKEN_COUNT_HEADERS)
    return sum(int(count) for count in counts if count.isdigit())


class EmbeddingError(Exception):
    """The model gave no usable vector; the message is the per-sale reason."""


class BedrockUnavailable(EmbeddingError, Transient):
    """Bedrock did not answer, or answered that it cannot now: the call is worth trying again."""


class ImageEmbedder(ConfigurableResource):
    """Turns image bytes (of the formats `image_rule` names) into one vector of `dimension` floats."""

    dimension: int = Field(default=1024, description="vector length")
    max_concurrency: int = Field(default=16, description="embedding calls in flight at once")
    requests_per_minute: float | None = Field(
        default=None,
        description="the service's quota for this run: calls are paced to it (None: not paced)",
    )
    tokens_per_minute: float | None = Field(
        default=None,
        description="the model's tokens-per-minute quota for this run: calls are paced to the "
        "tokens their answers say they were charged (None: not paced)",
    )

    _pace: Pace | None = PrivateAttr(default=None)

    def use_pace(self, pace: Pace) -> None:
        """Pace (and count) this embedder's calls with `pace`, which other processes may share."""
        self._pace = pace

    @property
    def model_id(self) -> str:
        raise NotImplementedError

    @property
    def price_per_image(self) -> float:
        return 0.0

    @property
    def image_rule(self) -> ImageRule:
        """The pictures it takes; others are re-encoded first (`core/imaging.prepare_for`)."""
        return DEFAULT_MODEL.images

    def embed(self, image: bytes) -> np.ndarray:
        """A float32 vector of `dimension` values, or EmbeddingError."""
        raise NotImplementedError


class LocalVisualEmbedder(ImageEmbedder):
    """Deterministic visual features (colour layout and edges), same interface as Bedrock's models.

    It stands in for the configured Bedrock model (`stands_for`, EMBEDDING_MODEL) with a model of
    its own: for the default one, the features as they are (`local-visual-features-v1/<length>`);
    for another, the same features in another basis (`local-visual-features-v1-as-<model>/<length>`:
    other coordinates, the same neighbours), so that a switch of model can be tried on the demo's
    data and its indexes told apart."""

    stands_for: str = Field(default=DEFAULT_MODEL.model_id, description="EMBEDDING_MODEL")

    @property
    def model_id(self) -> str:
        return local_stand_in(self.stands_for, self.dimension)

    @property
    def image_rule(self) -> ImageRule:
        return model_named(self.stands_for).images

    def embed(self, image: bytes) -> np.ndarray:
        try:
            vector = visual_features(image, self.dimension)
        except BadImage as error:
            raise EmbeddingError(f"unusable image: {error}") from None
        if self.stands_for != DEFAULT_MODEL.model_id:
            basis = np.random.default_rng(zlib.crc32(self.stands_for.encode()))
            signs = basis.choice(np.array([-1.0, 1.0], np.float32), self.dimension)
            vector = (vector * signs)[basis.permutation(self.dimension)]
        return vector


class BedrockEmbedder(ImageEmbedder, AwsResource):
    """The Bedrock model `model` (EMBEDDING_MODEL, one of `core/models`) through one shared
    bedrock-runtime client with adaptive retries (throttling), a bound on calls in flight, and its own retry of ModelTimeoutException
    and of throttling that outlasts botocore's attempts.

    A call that is not answered costs at most `http_attempts` x (`connect_timeout_s` +
    `read_timeout_s`) (3 x 25 s by default), then fails with BedrockUnavailable, as do 5xx and
    throttling that outlasts the retries: the caller waits such an outage out (core/outage).
    """

    model: str = Field(
        default=DEFAULT_MODEL.model_id, description="Bedrock model id, one of core/models"
    )
    price_per_image_usd: float | None = Field(
        default=None, description="on-demand price of one image (None: the model's list price)"
    )
    model_timeout_retries: int = 3
    model_timeout_backoff_s: float = 1.0
    http_attempts: int = Field(
        default=3, description="botocore attempts per call (throttling, resets, timeouts)"
    )
    throttling_retries: int = Field(
        default=4, description="further tries, with backoff, of a call still throttled"
    )
    connect_timeout_s: float = 5.0
    read_timeout_s: float = Field(default=20.0, description="longest wait for one answer")

    _slots: threading.BoundedSemaphore | None = PrivateAttr(default=None)

    @property
    def family(self) -> EmbeddingModel:
        return model_named(self.model)

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def price_per_image(self) -> float:
        if self.price_per_image_usd is not None:
            return self.price_per_image_usd
        return self.family.price_per_image

    @property
    def image_rule(self) -> ImageRule:
        return self.family.images

    def setup_for_execution(self, context) -> None:
        self.family.check_dimension(self.dimension)

    def _client(self):
        # Paced, every attempt waits for its slot instead, and botocore's own limiter stays out.
        mode = "standard" if self.requests_per_minute or self.tokens_per_minute else "adaptive"
        client = self.boto3_client(
            "bedrock-runtime",
            retries={"mode": mode, "max_attempts": self.http_attempts},
            max_pool_connections=max(self.max_concurrency, 10),
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
        )
        if self._slots is None:
            with self._clients_lock:  # one bound for every thread, however many start at once
                if self._slots is None:
                    self._slots = threading.BoundedSemaphore(self.max_concurrency)
                    # Every HTTP attempt, botocore's retries included, is paced and counted.
                    events = client.meta.events
                    events.register("before-send.bedrock-runtime.InvokeModel", self._before_send)
                    events.register("needs-retry.bedrock-runtime.InvokeModel", self._answered)
        return client

    def _shared_pace(self) -> Pace:
        """The pace of the calls: the one `use_pace` gave, else this embedder's own."""
        pace = self._pace
        if pace is None:
            pace = Pace(self.requests_per_minute, self.tokens_per_minute)
            self.use_pace(pace)
        return pace

    def _before_send(self, **_) -> None:
        self._shared_pace().wait()

    def _answered(self, response=None, **_) -> None:
        if response is None:  # no answer (a reset, a timeout)
            self._shared_pace().unanswered()
            return
        http, parsed = response
        code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
        throttled = http.status_code == 429 or code == "ThrottlingException"
        self._shared_pace().answered(throttled, charged_tokens(http.status_code, http.headers))

    def embed(self, image: bytes) -> np.ndarray:
        client = self._client()
        slots = self._slots
        assert slots is not None  # made with the client
        family = self.family
        try:
            body = family.body(image, self.dimension)
        except ValueError as error:
            raise EmbeddingError(f"unusable image: {error}") from None

        def invoke() -> bytes:
            with slots:
                response = client.invoke_model(
                    modelId=self.model,
                    body=body,
                    contentType="application/json",
                    accept="application/json",
                )
                # An answer is ~25 KB; a hostile one of gigabytes is read no further than the cap.
                # Read to its end otherwise: the last read checks the body against its length.
                chunks, size = [], 0
                for chunk in response["body"].iter_chunks(65536):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        break
                return b"".join(chunks)

        limits = {
            "ModelTimeoutException": self.model_timeout_retries,
            "ThrottlingException": self.throttling_retries,
        }
        retried: Counter[str] = Counter()

        def retryable(error: Exception) -> bool:
            code = error.response["Error"]["Code"] if isinstance(error, ClientError) else ""
            retried[code] += 1
            return retried[code] <= limits.get(code, 0)

        try:
            answer = call_with_retries(
                invoke, retryable, sum(limits.values()), self.model_timeout_backoff_s
            )
        except ClientError as error:
            code = error.response["Error"]["Code"]
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            kind = (
                BedrockUnavailable if code in UNAVAILABLE_CODES or status >= 500 else EmbeddingError
            )
            raise kind(
                f"Bedrock {code}: {error.response['Error'].get('Message', '')[:120]}"
            ) from None
        except UNANSWERED as error:
            raise BedrockUnavailable(f"Bedrock did not answer: {type(error).__name__}") from None
        except BotoCoreError as error:  # anything else of the transport's: not this image's fault
            raise BedrockUnavailable(f"Bedrock call failed: {type(error).__name__}") from None
        except Exception as error:  # not the service's kind of failure: this call's own
            raise EmbeddingError(f"Bedrock call failed: {type(error).__name__}") from None
        if len(answer) > MAX_ANSWER_BYTES:
            raise EmbeddingError(f"unusable Bedrock answer: over {MAX_ANSWER_BYTES} bytes")
        try:
            return family.vector(answer, self.dimension)
        except Exception as error:  # whatever the answer makes the parsing raise: this sale's
            raise EmbeddingError(f"unusable Bedrock answer: {str(error)[:160]}") from None
