"""Image checks, Titan-ready re-encoding, and the local embedder's visual features."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Titan Multimodal Embeddings accepts PNG or JPEG up to 2048 x 2048 pixels.
TITAN_MAX_SIDE = 2048
TITAN_FORMATS = {"JPEG": "jpg", "PNG": "png"}
# Decompression-bomb guard: far more pixels than any product photo has.
MAX_PIXELS = 50_000_000


class BadImage(Exception):
    """The bytes are not an image this pipeline can use; the message is the reason."""


@dataclass(frozen=True)
class PreparedImage:
    data: bytes  # what is stored and embedded
    extension: str
    width: int
    height: int
    resized: bool


def decode(data: bytes) -> Image.Image:
    """Decode fully, refusing non-images, corrupt files and decompression bombs before they expand."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"decompression bomb: {width}x{height} pixels")
            image.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImage(f"corrupt image: {str(error)[:80]}") from None
    return image


def prepare_for_titan(data: bytes) -> PreparedImage:
    """The image as Titan accepts it: PNG or JPEG within 2048 px a side, else re-encoded."""
    image = decode(data)
    fmt = image.format or ""
    width, height = image.size
    if fmt in TITAN_FORMATS and max(width, height) <= TITAN_MAX_SIDE:
        return PreparedImage(data, TITAN_FORMATS[fmt], width, height, resized=False)
    image = ImageOps.exif_transpose(image)
    image.thumbnail((TITAN_MAX_SIDE, TITAN_MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    has_alpha = image.mode in ("RGBA", "LA", "P")
    if has_alpha:
        image.convert("RGBA").save(buffer, format="PNG", optimize=True)
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return PreparedImage(
        buffer.getvalue(), "png" if has_alpha else "jpg", image.width, image.height, resized=True
    )


FEATURE_SIDE = 16


def visual_features(data: bytes, dimension: int = 1024) -> np.ndarray:
    """A deterministic unit vector that puts similar pictures close together.

    1024 features: a 16x16 RGB thumbnail (768) and its 16x16 luminance gradient (256), centred and
    L2-normalised. Other dimensions come from a fixed random projection of those.
    """
    image = decode(data).convert("RGB").resize((FEATURE_SIDE, FEATURE_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    luminance = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gy, gx = np.gradient(luminance)
    features = np.concatenate([pixels.ravel(), np.hypot(gx, gy).ravel()])
    features = features - features.mean()
    if dimension != features.size:
        projection = np.random.default_rng(1024).standard_normal((features.size, dimension))
        features = features @ projection.astype(np.float32)
    norm = float(np.linalg.norm(features))
    if norm == 0.0:
        features = np.full(dimension, 1.0 / np.sqrt(dimension), dtype=np.float32)
    else:
        features = features / norm
    return features.astype(np.float32)
