"""Image checks, Titan-ready re-encoding, and the local embedder's visual features."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Titan Multimodal Embeddings accepts PNG or JPEG up to 2048 x 2048 pixels.
TITAN_MAX_SIDE = 2048
TITAN_FORMATS = {"JPEG": "jpg", "PNG": "png"}
# Decompression-bomb guard: far more pixels than any product photo has.
MAX_PIXELS = 50_000_000
# Decoded pixels the threads of one process may hold at once. An image costs its decoded size
# twice (the pixels and one converted copy); a JPEG larger than Titan takes is decoded at a reduced
# scale (1/2 to 1/8) to begin with. An image that alone needs more is refused; others wait their
# turn, so the download threads' decodes never add up past this, whatever the pictures are.
DECODE_MEMORY_BUDGET = 512 * 2**20


class BadImage(Exception):
    """The bytes are not an image this pipeline can use; the message is the reason."""


@dataclass(frozen=True)
class PreparedImage:
    data: bytes  # what is embedded: the original bytes, or the picture re-encoded for Titan
    extension: str  # of `data`
    width: int
    height: int
    resized: bool  # re-encoded: scaled down, turned upright, or not PNG or JPEG
    source_format: SourceFormat  # the downloaded bytes' own format


@dataclass(frozen=True)
class SourceFormat:
    """A file format as an object's name and Content-Type carry it."""

    extension: str
    content_type: str


# The formats Pillow reads that product pictures come in; another is named by Pillow's own name.
SOURCE_FORMATS = {
    "JPEG": SourceFormat("jpg", "image/jpeg"),
    "PNG": SourceFormat("png", "image/png"),
    "WEBP": SourceFormat("webp", "image/webp"),
    "GIF": SourceFormat("gif", "image/gif"),
    "AVIF": SourceFormat("avif", "image/avif"),
    "HEIF": SourceFormat("heic", "image/heic"),
    "TIFF": SourceFormat("tiff", "image/tiff"),
    "BMP": SourceFormat("bmp", "image/bmp"),
    "ICO": SourceFormat("ico", "image/vnd.microsoft.icon"),
    "JPEG2000": SourceFormat("jp2", "image/jp2"),
    "MPO": SourceFormat("jpg", "image/jpeg"),
    "QOI": SourceFormat("qoi", "image/qoi"),
}
EXIF_ORIENTATION = 0x0112


def source_format(pillow_format: str | None) -> SourceFormat:
    known = SOURCE_FORMATS.get(pillow_format or "")
    if known:
        return known
    name = "".join(c for c in (pillow_format or "").lower() if c.isalnum())[:8] or "bin"
    return SourceFormat(name, "application/octet-stream")


class DecodeBudget:
    """A pool of bytes that decodes take from and give back, waiting while it is short."""

    def __init__(self, total: int):
        self.total = total
        self._free = total
        self._changed = threading.Condition()
        self.most_held = 0

    @contextlib.contextmanager
    def hold(self, cost: int):
        if cost > self.total:
            raise BadImage(
                f"needs {cost / 2**20:.0f} MiB to decode, over the {self.total / 2**20:.0f} MiB budget"
            )
        with self._changed:
            self._changed.wait_for(lambda: self._free >= cost)
            self._free -= cost
            self.most_held = max(self.most_held, self.total - self._free)
        try:
            yield
        finally:
            with self._changed:
                self._free += cost
                self._changed.notify_all()


PROCESS_DECODE_BUDGET = DecodeBudget(DECODE_MEMORY_BUDGET)


@functools.cache
def return_freed_pixels_to_the_os() -> None:
    """Have glibc map every block of 4 MiB or more on its own, so it goes back to the system when
    freed. By default such blocks come from per-thread heaps that keep freed memory: with a few
    dozen download threads, picture after picture, the process grows to several times the decode
    budget although the budget is never exceeded (1.5 GiB against 0.3 GiB held; the `day_of_100k_sales` benchmark measures the processes' memory)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator has its own ways
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 4 * 2**20)


_M_MMAP_THRESHOLD = -3


@contextlib.contextmanager
def decoded(data: bytes, max_side: int | None = None):
    """The image fully decoded, for the duration of the block, its memory held in the budget.
    Refuses non-images, corrupt files and decompression bombs before they expand. With `max_side`,
    a JPEG larger than that is decoded at the smallest reduced scale that still covers it."""
    return_freed_pixels_to_the_os()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"decompression bomb: {width}x{height} pixels")
            image.info["original_size"] = (width, height)
            if max_side and image.format == "JPEG" and max(width, height) > max_side:
                image.draft("RGB", (max_side, max_side))
            cost = image.width * image.height * len(image.getbands()) * 2
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image") from None
    except Exception as error:  # whatever a hostile file makes a decoder raise: this image's
        raise BadImage(f"corrupt image: {type(error).__name__}: {str(error)[:80]}") from None
    short = shorter_than_declared(image, len(data))
    if short:
        raise BadImage(short)
    with PROCESS_DECODE_BUDGET.hold(cost):
        try:
            image.load()
        except Exception as error:
            raise BadImage(f"corrupt image: {type(error).__name__}: {str(error)[:80]}") from None
        yield image


def shorter_than_declared(image: Image.Image, size: int) -> str | None:
    """Why the data cannot hold the picture its header declares, or None. A JPEG codes each 8x8
    block of its luminance in at least one bit (Huffman coding: a DC difference, or an end of
    block, per block), so fewer bytes than pixels / 512 are a file cut short that a decoder would
    finish in grey (libjpeg ends a short scan with a warning, not an error)."""
    width, height = image.info.get("original_size", image.size)
    if image.format == "JPEG" and size < width * height // 512:
        return f"data ends before its declared size: {width}x{height} pixels in {size} bytes"
    return None


def prepare_for_titan(data: bytes) -> PreparedImage:
    """The image as Titan accepts it: PNG or JPEG within 2048 px a side, else re-encoded."""
    with decoded(data, TITAN_MAX_SIDE) as image:
        fmt = image.format or ""
        source = source_format(fmt)
        width, height = image.info["original_size"]
        upright = _orientation(image) in (None, 1)
        if fmt in TITAN_FORMATS and max(width, height) <= TITAN_MAX_SIDE and upright:
            return PreparedImage(data, TITAN_FORMATS[fmt], width, height, False, source)
        # An orientation tag Pillow cannot apply leaves the picture as it is stored.
        with contextlib.suppress(Exception):
            image = ImageOps.exif_transpose(image)
        image.thumbnail((TITAN_MAX_SIDE, TITAN_MAX_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        has_alpha = image.mode in ("RGBA", "LA", "P")
        if has_alpha:
            image.convert("RGBA").save(buffer, format="PNG", optimize=True)
        else:
            image.convert("RGB").save(buffer, format="JPEG", quality=90)
        return PreparedImage(
            buffer.getvalue(),
            "png" if has_alpha else "jpg",
            image.width,
            image.height,
            True,
            source,
        )


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # an EXIF block that does not parse: nothing to turn by
        return None


FEATURE_SIDE = 16


def visual_features(data: bytes, dimension: int = 1024) -> np.ndarray:
    """A deterministic unit vector that puts similar pictures close together.

    1024 features: a 16x16 RGB thumbnail (768) and its 16x16 luminance gradient (256), centred and
    L2-normalised. Other dimensions come from a fixed random projection of those.
    """
    with decoded(data) as image:
        image = image.convert("RGB").resize((FEATURE_SIDE, FEATURE_SIDE), Image.Resampling.BOX)
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


def thumbnail_jpeg(data: bytes, side: int = 320) -> bytes:
    """A JPEG of the picture within `side` pixels a side, upright (BadImage for a non-image)."""
    with decoded(data, side) as image:
        with contextlib.suppress(Exception):
            image = ImageOps.exif_transpose(image)
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
