"""Every image's vector, once, by its content: what lets an image be embedded once, ever.

One object per image, model and length (`layout.vector_key`), written when the image is first
embedded. Asking whether an image has a vector is one HEAD request, whatever the number of images
stored: a lookup costs the day, not the years behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from smartgo_analytics.layout import vector_key
from smartgo_analytics.resources.object_store import ObjectStore


@dataclass(frozen=True)
class VectorStore:
    object_store: ObjectStore
    model_id: str
    dimension: int

    def _key(self, sha: str) -> str:
        return vector_key(self.model_id, self.dimension, sha)

    def has(self, sha: str) -> bool:
        return self.object_store.exists(self._key(sha))

    def put(self, sha: str, vector: np.ndarray) -> None:
        self.object_store.put_bytes(self._key(sha), np.asarray(vector, np.float32).tobytes())

    def get(self, sha: str) -> np.ndarray | None:
        """The image's vector, or None: none stored, or what is stored is not a usable vector."""
        try:
            data = self.object_store.get_bytes(self._key(sha))
        except FileNotFoundError:
            return None
        vector = np.frombuffer(data, np.float32) if len(data) % 4 == 0 else np.zeros(0, np.float32)
        if len(vector) != self.dimension or not np.isfinite(vector).all() or not vector.any():
            return None
        return vector

    def get_many(self, shas: Iterable[str], threads: int = 32) -> dict[str, np.ndarray]:
        wanted = sorted(set(shas))
        if not wanted:
            return {}
        with ThreadPoolExecutor(min(threads, len(wanted)), thread_name_prefix="vectors") as pool:
            found = dict(zip(wanted, pool.map(self.get, wanted), strict=True))
        return {sha: vector for sha, vector in found.items() if vector is not None}


@dataclass
class ReusedVectors:
    """The vectors of a day's reused images: from the store or, for an image embedded before the
    store existed, from the day's rows in the table (`fallback`, read once if needed), which is
    then put in the store."""

    store: VectorStore
    fallback: Callable[[], Mapping[str, np.ndarray]]
    _fallback: Mapping[str, np.ndarray] | None = field(default=None, init=False)

    def for_images(self, shas: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = set(shas)
        found = self.store.get_many(wanted)
        missing = wanted - found.keys()
        if missing:
            if self._fallback is None:
                self._fallback = self.fallback()
            for sha in missing:
                if sha in self._fallback:
                    found[sha] = self._fallback[sha]
                    self.store.put(sha, found[sha])
        return found

    def __enter__(self) -> ReusedVectors:
        return self

    def __exit__(self, *exc) -> None:
        close = getattr(self._fallback, "__exit__", None)
        if close is not None:
            close(*exc)
