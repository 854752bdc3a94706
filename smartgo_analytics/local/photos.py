"""A corpus of pictures as SmartGo's sellers send them, generated rather than downloaded: 12 MP phone
photos of 2-5 MB (landscape and portrait, EXIF orientations 6 and 8, baseline and progressive, CMYK,
an ICC profile), a 24 MP camera photo, a large PNG screenshot with alpha and a WebP. Their content
is photo-like (smooth shapes under sensor-like grain), so that their files have real sizes and
their decoders do real work. Tests, benchmarks and the demo's CDN (`DEMO_PICTURES=photos`) use it.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

VERSION = 1  # of the pictures below: the cache on disk is kept per version
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes

    @property
    def megapixels(self) -> float:
        with Image.open(io.BytesIO(self.data)) as image:
            return image.width * image.height / 1e6


def scene(width: int, height: int, seed: int, grain: int = 6) -> Image.Image:
    """Photo-like pixels: coarse colour fields, bicubic-smoothed, with mid-scale texture and
    per-pixel grain, so that JPEG spends real bytes (a 12 MP picture is about 3 MB at quality 92)."""
    rng = np.random.default_rng(seed)
    bands, mode = 3, "RGB"
    coarse = rng.integers(0, 255, (height // 64 + 1, width // 64 + 1, bands), dtype=np.uint8)
    mid = Image.fromarray(coarse, mode).resize((width // 4, height // 4), Image.Resampling.BICUBIC)
    texture = np.asarray(mid, dtype=np.int16) + rng.normal(0, 10, (height // 4, width // 4, bands))
    smooth = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8), mode)
    pixels = np.asarray(smooth.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    pixels = pixels + rng.integers(-grain, grain + 1, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode)


def screenshot(width: int, height: int, seed: int) -> Image.Image:
    """Screen-like pixels: flat panels, rows of text-like marks, a photo inset, a transparent bar."""
    rng = np.random.default_rng(seed)
    panels = rng.integers(180, 255, (height // 90 + 1, width // 160 + 1, 4), dtype=np.uint8)
    image = Image.fromarray(panels, "RGBA").resize((width, height), Image.Resampling.NEAREST)
    pixels = np.array(image)
    for top in range(height // 8, height, 24):  # lines of "text": sparse dark marks
        marks = rng.random((12, width)) < 0.25
        pixels[top : top + 12][marks] = (30, 30, 30, 255)
    inset = np.asarray(scene(width // 3, height // 3, seed, grain=3).convert("RGBA"))
    pixels[height // 3 : height // 3 + inset.shape[0], width // 3 : width // 3 + inset.shape[1]] = (
        inset
    )
    pixels[..., 3] = 255
    pixels[: height // 20, :, 3] = 0
    return Image.fromarray(pixels, "RGBA")


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _oriented(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def _make() -> list[Photo]:
    phone = (4032, 3024)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    made: list[tuple[str, Image.Image, str, dict]] = [
        ("12MP landscape, baseline", scene(*phone, 1), "JPEG", {"quality": 92}),
        (
            "12MP portrait, EXIF orientation 6",
            scene(*phone, 2),
            "JPEG",
            {"quality": 92, "exif": _oriented(6)},
        ),
        (
            "12MP portrait, EXIF orientation 8",
            scene(*phone, 3, grain=8),
            "JPEG",
            {"quality": 90, "exif": _oriented(8)},
        ),
        (
            "12MP progressive",
            scene(*phone, 4),
            "JPEG",
            {"quality": 92, "progressive": True},
        ),
        ("12MP CMYK", scene(*phone, 5, grain=4).convert("CMYK"), "JPEG", {"quality": 85}),
        (
            "12MP with an ICC profile",
            scene(*phone, 6),
            "JPEG",
            {"quality": 92, "icc_profile": srgb},
        ),
        ("24MP camera photo", scene(6000, 4000, 7, grain=4), "JPEG", {"quality": 88}),
        ("PNG screenshot with alpha", screenshot(2880, 1800, 8), "PNG", {}),
        ("12MP WebP", scene(*phone, 9), "WEBP", {"quality": 85, "method": 0}),
    ]
    return [Photo(name, _encoded(image, fmt, **options)) for name, image, fmt, options in made]


@functools.cache
def photo_corpus() -> tuple[Photo, ...]:
    """The corpus, made once per machine and version (about 5 s) and kept in the temporary
    directory: every test worker, benchmark server and CDN process reads the same files."""
    folder = Path(tempfile.gettempdir()) / f"smartgo-photo-corpus-v{VERSION}"
    names = folder / "names.txt"
    if names.exists():
        listed = names.read_text().splitlines()
        return tuple(Photo(n, (folder / f"{i}.bin").read_bytes()) for i, n in enumerate(listed))
    photos = _make()
    folder.mkdir(exist_ok=True)
    for i, photo in enumerate(photos):
        _write_whole(folder / f"{i}.bin", photo.data)
    _write_whole(names, "\n".join(p.name for p in photos).encode())  # last: the corpus is whole
    return tuple(photos)


def _write_whole(path: Path, data: bytes) -> None:
    """Written beside, then renamed: another process never reads half a file."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as part:
        part.write(data)
    os.replace(part.name, path)


def stamped(data: bytes, n: int) -> bytes:
    """The same picture as a different file: bytes after the picture's end, which decoders ignore,
    give each sale its own image (its own sha256, copy and embedding call) at no cost to make."""
    return data + f"\nsale {n}".encode()


def corpus_picture(n: int) -> bytes:
    """Picture `n` of an endless supply: the corpus in turn, each one a distinct file."""
    corpus = photo_corpus()
    return stamped(corpus[n % len(corpus)].data, n)
