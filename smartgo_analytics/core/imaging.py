"""Image checks, re-encoding to what a model accepts, and the local embedder's visual features."""

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

# Decompression-bomb guard: far more pixels than any product photo has.
MAX_PIXELS = 50_000_000
# Decoded pixels the threads of a process may hold at once (or, shared, of the embedding step's
# worker processes together). An image costs its decoded size twice (the pixels and a copy); a JPEG
# larger than the model takes is decoded at a reduced scale (1/2 to 1/8), so a 12 MP photo costs 18 MB.
# An image that alone needs more than all of it waits and is decoded alone; the others wait their
# turn, so decodes never add up past this, whatever the pictures are.
DECODE_MEMORY_BUDGET = 128 * 2**20
# Downloaded bytes held at once, from the first byte read until the copy is stored (twice a body:
# its pieces and the whole), and Bedrock requests (a prepared picture's base64 and body) until
# answered: a dozen 4 MB photos. With the decode budget, a day of photos stays within what a day of
# drawings needs, whatever the number of threads and processes (`photo_throughput` measures it).
DOWNLOAD_MEMORY_BUDGET = 96 * 2**20


class BadImage(Exception):
    """The bytes are not an image this pipeline can use; the message is the reason."""


@dataclass(frozen=True)
class ImageRule:
    """What a model takes as an image: the formats it reads (Pillow's name: the file extension)
    at most `max_side` pixels a side. A picture outside it is re-encoded once (`prepare_for`)."""

    formats: dict[str, str]
    max_side: int


@dataclass(frozen=True)
class PreparedImage:
    data: bytes  # what is embedded: the original bytes, or the picture re-encoded for the model
    extension: str  # of `data`
    width: int
    height: int
    resized: bool  # re-encoded: scaled down, turned upright, or of a format the model does not read
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
    """A pool of bytes that decodes (or downloads) take from and give back, waiting while it is
    short. Made with a multiprocessing context and handed to the worker processes it starts (as the
    embedding step does), it bounds them all together: a day's pictures in flight stay within it
    however many processes and threads there are."""

    def __init__(self, total: int, processes=None, what: str = "decode"):
        self.total, self.what = total, what
        # [free, most held]: in shared memory when processes share the budget.
        if processes is None:
            self._state: list[int] = [total, 0]
            self._changed = threading.Condition()
        else:
            shared = processes.Array("q", [total, 0], lock=False)
            self._state, self._changed = shared, processes.Condition()

    @property
    def most_held(self) -> int:
        return self._state[1]

    def take(self, cost: int) -> int:
        """Take `cost` bytes, once they are free; the caller gives back what this returns with
        `give`. A cost over the whole budget waits until nothing else is held and takes it all: a
        picture that large (MAX_PIXELS bounds it) is decoded alone."""
        cost = min(cost, self.total)
        with self._changed:
            self._changed.wait_for(lambda: self._state[0] >= cost)
            self._state[0] -= cost
            self._state[1] = max(self._state[1], self.total - self._state[0])
        return cost

    def give(self, cost: int) -> None:
        with self._changed:
            self._state[0] += cost
            self._changed.notify_all()

    @contextlib.contextmanager
    def hold(self, cost: int):
        taken = self.take(cost)
        try:
            yield
        finally:
            self.give(taken)


PROCESS_DECODE_BUDGET = DecodeBudget(DECODE_MEMORY_BUDGET)
_budget = PROCESS_DECODE_BUDGET  # what `decoded` takes from: this process's, or one shared


def use_decode_budget(budget: DecodeBudget | None) -> None:
    """Decode within `budget` (shared with other processes) from now on; None: this process's own."""
    global _budget
    _budget = budget or PROCESS_DECODE_BUDGET


@functools.cache
def return_freed_pixels_to_the_os() -> None:
    """Have glibc map every block of 1 MiB or more on its own, so it goes back to the system when
    freed, and keep to two heaps (as deploy/Dockerfile's MALLOC_ARENA_MAX does). By default such blocks come from per-thread heaps that keep freed
    memory: with a few dozen download threads, photo after photo (a 4 MB download, its base64 for
    Bedrock), the process grows to several times what it holds although the budgets are never
    exceeded (the `day_of_100k_sales` and `photo_throughput` benchmarks measure the processes)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator has its own ways
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 2**20)
        libc.mallopt(_M_ARENA_MAX, 2)


def give_freed_memory_back() -> None:
    """Return the free pages inside the heaps to the system (glibc's malloc_trim): a download's
    64 KB pieces leave holes that the heaps would otherwise keep after a burst of photos."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@contextlib.contextmanager
def decoded(data: bytes, max_side: int | None = None, *, within: int | None = None):
    """The image fully decoded, for the duration of the block, its memory held in the budget.
    Refuses non-images, corrupt files and decompression bombs before they expand. A JPEG is decoded
    at a reduced scale (DCT scaling: 1/2, 1/4 or 1/8) where that is enough: with `max_side`, the
    smallest that still covers `max_side` pixels a side (Pillow's `draft`); with `within`, the
    largest that fits within `within` pixels a side, so that nothing is left to shrink."""
    return_freed_pixels_to_the_os()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"decompression bomb: {width}x{height} pixels")
            image.info["original_size"] = (width, height)
            if image.format == "JPEG":
                scale = _dct_scale(width, height, max_side, within)
                if scale > 1:
                    # draft takes a size and picks the largest scale that still covers it.
                    image.draft(image.mode, (width // scale, height // scale))
            cost = image.width * image.height * len(image.getbands()) * 2
            if image.format == "JPEG" and image.info.get("progressive"):
                cost += (
                    width * height * 3
                )  # the decoder's coefficients, at full size whatever the scale
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise BadImage(_unidentified(data)) from None
    except Exception as error:  # whatever a hostile file makes a decoder raise: this image's
        raise BadImage(f"corrupt image: {type(error).__name__}: {str(error)[:80]}") from None
    short = shorter_than_declared(image, len(data))
    if short:
        raise BadImage(short)
    with _budget.hold(cost):
        try:
            image.load()
        except Exception as error:
            raise BadImage(f"corrupt image: {type(error).__name__}: {str(error)[:80]}") from None
        yield image


def _dct_scale(width: int, height: int, max_side: int | None, within: int | None) -> int:
    """The JPEG decoder's reduction (1, 2, 4 or 8) for a picture of this size."""
    longest = max(width, height)
    if within:
        return next((s for s in (1, 2, 4, 8) if -(-longest // s) <= within), 8)
    if max_side:
        return next((s for s in (8, 4, 2) if longest // s >= max_side), 1)
    return 1


# The brands of an ISO base media file's `ftyp` box that mark HEVC pictures (iPhone HEIC).
HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


def _unidentified(data: bytes) -> str:
    """Why Pillow could not open the bytes: HEIC is named, since phones send it and it can be fixed
    at upload; anything else is not an image."""
    if data[4:8] == b"ftyp" and data[8:12] in HEIC_BRANDS:
        return "HEIC pictures are not embedded: upload a JPEG (iPhone: Settings > Camera > Formats > Most Compatible)"
    return "not an image"


def shorter_than_declared(image: Image.Image, size: int) -> str | None:
    """Why the data cannot hold the picture its header declares, or None. A JPEG codes each 8x8
    block of its luminance in at least one bit (Huffman coding: a DC difference, or an end of
    block, per block), so fewer bytes than pixels / 512 are a file cut short that a decoder would
    finish in grey (libjpeg ends a short scan with a warning, not an error)."""
    width, height = image.info.get("original_size", image.size)
    if image.format == "JPEG" and size < width * height // 512:
        return f"data ends before its declared size: {width}x{height} pixels in {size} bytes"
    return None


def prepare_for(data: bytes, rule: ImageRule) -> PreparedImage:
    """The image as the model takes it (`rule`): as it is when of its formats and sides, else
    re-encoded once, as JPEG (PNG when it has transparency) within `rule.max_side`.

    A larger JPEG is decoded at the largest DCT reduction that fits the side (a 12 MP photo at 1/2,
    2016 px for 2048; a 24 MP one at 1/4, 1500 px), which leaves no resampling to do: the decode and
    one encode are the whole cost (the `embedding_throughput` benchmark measures it against that
    floor). Other formats are shrunk by whole-pixel averaging (`Image.reduce`), as cheap as a
    shrink gets."""
    with decoded(data, within=rule.max_side) as image:
        fmt = image.format or ""
        source = source_format(fmt)
        width, height = image.info["original_size"]
        upright = _orientation(image) in (None, 1)
        if fmt in rule.formats and max(width, height) <= rule.max_side and upright:
            return PreparedImage(data, rule.formats[fmt], width, height, False, source)
        has_alpha = image.mode in ("RGBA", "LA", "P", "PA")
        icc = image.info.get("icc_profile")
        if image.mode not in ("L", "RGB", "RGBA", "CMYK"):  # palettes, 16-bit, floats
            image = image.convert("RGBA" if has_alpha else "RGB")
        factor = -(-max(image.size) // rule.max_side)
        if factor > 1:
            image = image.reduce(factor)
        if not upright:  # an orientation tag Pillow cannot apply leaves the picture as stored
            with contextlib.suppress(Exception):
                image = ImageOps.exif_transpose(image)
        buffer = io.BytesIO()
        # Converted only when the mode differs: a conversion to the same mode is a full copy.
        if has_alpha:
            # Fast deflate: the PNG is sent once and never kept, and a request's 25 MB is far off.
            _as(image, "RGBA").save(buffer, format="PNG", compress_level=1)
        elif image.mode == "CMYK":  # its profile describes inks, not the RGB it becomes
            image.convert("RGB").save(buffer, format="JPEG", quality=90)
        else:
            # The colour profile goes along, not converted: no pass over the pixels for it.
            _as(image, "RGB").save(buffer, format="JPEG", quality=90, icc_profile=icc)
        return PreparedImage(
            buffer.getvalue(),
            "png" if has_alpha else "jpg",
            image.width,
            image.height,
            True,
            source,
        )


def _as(image: Image.Image, mode: str) -> Image.Image:
    return image if image.mode == mode else image.convert(mode)


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
