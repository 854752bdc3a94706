"""What may be asked: ids, labels and k checked before anything is read, and the picture asked
about read with a bound (a file, bytes, or a URL through the SSRF-safe fetcher) and embedded."""

from __future__ import annotations

import os
import stat

import numpy as np

from smartgo_analytics.core.imaging import BadImage, prepare_for
from smartgo_analytics.core.sales import VALID_ID
from smartgo_analytics.similarity.manifest import Manifest

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # a picture asked about, as the image fetcher's cap
MAX_LABEL = 200  # characters of a category or condition
MAX_K = 1000  # comparables asked for at once
ID_RULE = "a letter or digit, then up to 127 letters, digits, '.', '_' or '-'"


class ComparablesError(Exception):
    """The question cannot be answered; the message says why (unknown product, no vector, ...)."""


class UnusableImage(ComparablesError):
    """The picture asked about is not one the embedder can take."""


def check_question(product_id, image, tenant, category, condition, k) -> None:
    """ComparablesError, in one line, for a question no sold item could answer."""
    if (product_id is None) == (image is None):
        raise ComparablesError("give exactly one of a product id or an image")
    if k < 1:
        raise ComparablesError(f"k must be at least 1, got {k}")
    if k > MAX_K:
        raise ComparablesError(f"k must be at most {MAX_K}, got {k}")
    if tenant is not None and not (isinstance(tenant, str) and VALID_ID.fullmatch(tenant)):
        raise ComparablesError(f"{shown(tenant)} is not a tenant id ({ID_RULE})")
    if product_id is not None and not (
        isinstance(product_id, str) and VALID_ID.fullmatch(product_id)
    ):
        raise ComparablesError(f"unknown product {shown(product_id)} (ids are {ID_RULE})")
    for name, value in (("category", category), ("condition", condition)):
        if value is not None and (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > MAX_LABEL
            or any(ord(c) < 32 or ord(c) == 127 for c in value)
        ):
            raise ComparablesError(f"{shown(value)} is not a {name} (1 to {MAX_LABEL} characters)")


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def read_image_file(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """A picture from a regular file of at most `max_bytes`, read with that bound; a device, a
    FIFO or a directory is refused without waiting on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        raise ComparablesError(
            f"cannot read {shown(path)}: {getattr(error, 'strerror', None) or error}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ComparablesError(f"{shown(path)} is not a regular file")
        if info.st_size > max_bytes:
            raise ComparablesError(
                f"{shown(path)} is {info.st_size} bytes, over the {max_bytes} byte limit"
            )
        data = _read_at_most(fd, max_bytes + 1)
    except OSError as error:  # a file that refuses reads: /proc/self/mem, a failing disk
        raise ComparablesError(f"cannot read {shown(path)}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ComparablesError(f"{shown(path)} grew past the {max_bytes} byte limit while read")
    return data


def _read_at_most(fd: int, most: int) -> bytes:
    chunks, size = [], 0
    while size < most and (chunk := os.read(fd, min(2**20, most - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_picture(image: str | bytes, fetcher) -> bytes:
    """The picture's bytes, at most MAX_IMAGE_BYTES: given, fetched from an http(s) URL with
    `fetcher()`'s ImageFetcher (its cap is the same), or read from a file."""
    if isinstance(image, bytes):
        if len(image) > MAX_IMAGE_BYTES:
            raise ComparablesError(
                f"the picture is {len(image)} bytes, over the {MAX_IMAGE_BYTES} byte limit"
            )
        return image
    if image.startswith(("http://", "https://")):
        # Imported here: Dagster comes with the fetcher, and a question without a URL answers a
        # second sooner without it.
        from smartgo_analytics.resources.images import ImageFetchError

        try:
            return fetcher().fetch(image).data
        except ImageFetchError as error:
            raise ComparablesError(f"cannot fetch {shown(image)}: {error}") from None
    return read_image_file(image)


def embed(data: bytes, embedder, index: Manifest) -> np.ndarray:
    """The picture's vector from `embedder`, if it makes the index's kind of vector (its model and
    length); UnusableImage when it is no picture it can take."""
    # Imported here, as the fetcher above: the embedders are Dagster resources.
    from smartgo_analytics.resources.embeddings import EmbeddingError

    try:
        prepared = prepare_for(data, embedder.image_rule)
    except BadImage as error:
        raise UnusableImage(f"not a usable image: {error}") from None
    if embedder.dimension != index.dimension:
        raise ComparablesError(
            f"the index holds {index.dimension}-d vectors; the embedder makes "
            f"{embedder.dimension}-d ones"
        )
    if index.model is not None and embedder.model_id != index.model:
        raise ComparablesError(
            f"the index holds vectors of {index.model}; the embedder is {embedder.model_id}"
        )
    try:
        return embedder.embed(prepared.data)
    except EmbeddingError as error:
        raise ComparablesError(f"the picture could not be embedded: {error}") from None
