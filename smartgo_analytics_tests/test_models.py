"""The embedding models: each one's request body, answer and picture rule, against the loopback
Bedrock server, which reads each model's schema on its own."""

import io

import numpy as np
import pytest
from PIL import Image

from smartgo_analytics.core.imaging import prepare_for
from smartgo_analytics.core.models import MODELS, model_named
from smartgo_analytics.core.models.nova import MODEL as NOVA
from smartgo_analytics.core.models.titan import MODEL as TITAN
from smartgo_analytics.resources.embeddings import BedrockEmbedder, EmbeddingError
from smartgo_analytics_tests import servers


def picture(fmt: str, size=(96, 64), colour=(30, 140, 200)) -> bytes:
    image = Image.new("RGB", size, colour)
    image.paste((240, 200, 20), (10, 10, 40, 50))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("model_id", list(MODELS))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_each_model_is_called_with_its_own_body_and_its_answer_read_at_each_length(
    bedrock, bedrock_calls, model_id, fmt
):
    model = model_named(model_id)
    image = picture(fmt)
    for dimension in model.dimensions:
        embedder = BedrockEmbedder(
            endpoint_url=bedrock, region_name="us-east-1", model=model_id, dimension=dimension
        )
        vector = embedder.embed(image)
        assert vector.dtype == np.float32 and vector.shape == (dimension,)
        np.testing.assert_allclose(vector, servers.model_vector(model_id, image, dimension), 1e-6)
    assert bedrock_calls.models == {model_id: len(model.dimensions)}


def test_two_models_make_different_vectors_of_one_picture_with_the_same_neighbours(
    bedrock, bedrock_calls
):
    pictures = [picture("PNG", colour=(n * 40, 255 - n * 30, 90)) for n in range(6)]
    vectors = {}
    for model in (TITAN, NOVA):
        embedder = BedrockEmbedder(endpoint_url=bedrock, model=model.model_id, dimension=1024)
        vectors[model.model_id] = np.stack([embedder.embed(p) for p in pictures])
    titan, nova = vectors[TITAN.model_id], vectors[NOVA.model_id]
    assert not np.allclose(titan, nova)  # one index of both would be wrong
    np.testing.assert_allclose(titan @ titan.T, nova @ nova.T, rtol=1e-4, atol=1e-5)


def test_each_model_takes_its_own_formats_and_sides():
    webp = picture("WEBP")
    assert prepare_for(webp, NOVA.images).resized is False  # Nova reads WebP
    titan = prepare_for(webp, TITAN.images)  # Titan does not: re-encoded once
    assert titan.resized and titan.extension == "jpg" and titan.data[:3] == b"\xff\xd8\xff"
    large = picture("PNG", size=(4000, 1000))
    for model in (TITAN, NOVA):
        prepared = prepare_for(large, model.images)
        assert max(prepared.width, prepared.height) <= model.images.max_side


def test_a_body_the_model_refuses_is_this_pictures_error_and_an_unknown_model_is_named(
    bedrock, bedrock_calls
):
    nova = BedrockEmbedder(endpoint_url=bedrock, model=NOVA.model_id, dimension=256)
    with pytest.raises(EmbeddingError, match="unusable image: the picture is not PNG, JPEG"):
        nova.embed(b"BM" + b"\0" * 200)  # a BMP: prepare_for re-encodes it before it gets here
    with pytest.raises(ValueError, match="makes vectors of 256, 384, 1024 values, not 3072"):
        TITAN.check_dimension(3072)
    with pytest.raises(ValueError, match="no embedding model 'amazon.titan-embed-g2'"):
        model_named("amazon.titan-embed-g2")
    assert bedrock_calls.calls == 0


def test_the_local_embedder_stands_in_for_each_model_with_a_model_of_its_own():
    from smartgo_analytics.resources.embeddings import LocalVisualEmbedder

    pictures = [picture("PNG", colour=(n * 50, 90, 255 - n * 40)) for n in range(5)]
    titan, nova = LocalVisualEmbedder(), LocalVisualEmbedder(stands_for=NOVA.model_id)
    assert titan.model_id == "local-visual-features-v1/1024"  # the demo's data stays readable
    assert nova.model_id == f"local-visual-features-v1-as-{NOVA.model_id}/1024"
    assert nova.image_rule == NOVA.images
    a = np.stack([titan.embed(p) for p in pictures])
    b = np.stack([nova.embed(p) for p in pictures])
    assert not np.allclose(a, b)
    np.testing.assert_allclose(a @ a.T, b @ b.T, rtol=1e-4, atol=1e-5)
