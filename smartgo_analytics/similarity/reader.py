"""The one reader of the similarity index on the object store: which tenants it holds, each
tenant's manifest (and the version it was read at, for a conditional write), and a tenant's index
opened from its segments' files. The index step, its quality measure, the comparables command and
the page all read it here."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from smartgo_analytics.layout import (
    index_space,
    similarity_manifest_key,
    similarity_space_prefix,
    similarity_tenants,
)
from smartgo_analytics.similarity.index import TenantIndex
from smartgo_analytics.similarity.manifest import Manifest
from smartgo_analytics.similarity.segments import segment_keys


def indexed_tenants(store, space: str) -> list[str]:
    """The tenants that the index of this space (`layout.index_space`: a model and a length) holds."""
    return similarity_tenants(store.list_keys(similarity_space_prefix(space)), space)


def read_manifest(store, space: str, tenant: str) -> Manifest | None:
    """The tenant's manifest in this space; None when the index holds no such tenant."""
    try:
        return Manifest.from_json(store.get_bytes(similarity_manifest_key(space, tenant)))
    except FileNotFoundError:
        return None


def load_versioned(store, tenant: str, dimension: int, model: str) -> tuple[Manifest, str | None]:
    """The tenant's manifest of the model's vectors of this length (an empty one when there is none
    yet) and the version it was read at (None: there is none yet)."""
    try:
        key = similarity_manifest_key(index_space(model, dimension), tenant)
        data, version = store.get_versioned(key)
    except FileNotFoundError:
        return Manifest(tenant, dimension, model=model), None
    manifest = Manifest.from_json(data)
    manifest.require_model(model)
    return manifest, version


def load_manifest(store, tenant: str, dimension: int, model: str) -> Manifest:
    return load_versioned(store, tenant, dimension, model)[0]


class IndexReader:
    """Tenants' indexes opened from the store's files: the lake's own files locally; from S3,
    copies kept in `cache_dir` when given (segments are written once under new names, so a cached
    copy stays right), else fetched for the reader's life. `close()` lets them go."""

    def __init__(self, store, cache_dir: Path | None = None, space: str | Callable[[], str] = ""):
        self.store = store
        self.cache_dir = cache_dir
        # The model and length whose indexes `tenants` and `manifest` read; a callable is asked
        # at the first of them (an embedder built only when a question needs it).
        self._space = space
        self._released: list[Path] = []
        self._opened: list[TenantIndex] = []

    @property
    def space(self) -> str:
        if callable(self._space):
            self._space = self._space()
        return self._space

    def tenants(self) -> list[str]:
        return indexed_tenants(self.store, self.space)

    def manifest(self, tenant: str) -> Manifest | None:
        return read_manifest(self.store, self.space, tenant)

    def open(self, manifest: Manifest) -> TenantIndex:
        paths = {
            s.name: tuple(self._path(key) for key in segment_keys(manifest, s.name))
            for s in manifest.segments
        }
        self._opened.append(TenantIndex(manifest, paths))
        return self._opened[-1]

    def _path(self, key: str) -> Path:
        if self.cache_dir is None:
            path = self.store.local_path(key)
            self._released.append(path)
            return path
        cached = self.cache_dir / hashlib.sha256(self.store.uri(key).encode()).hexdigest()
        if not cached.exists():
            downloaded = self.store.local_path(key)
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(downloaded, f"{cached}.part")
                os.replace(f"{cached}.part", cached)
            finally:
                self.store.release(downloaded)
        return cached

    def close(self) -> None:
        for index in self._opened:
            index.close()
        for path in self._released:
            self.store.release(path)
        self._opened, self._released = [], []


class KeptIndexReader(IndexReader):
    """An IndexReader that keeps each tenant's index open across questions (a server's): a
    tenant's index is opened again only when its manifest names other segments (segments are
    written once, under new names). `close_all()` at the end."""

    def __init__(self, store, cache_dir: Path | None = None, space: str | Callable[[], str] = ""):
        super().__init__(store, cache_dir, space)
        self._kept: dict[str, tuple[tuple[str, ...], TenantIndex]] = {}
        self._lock = threading.Lock()

    def open(self, manifest: Manifest) -> TenantIndex:
        names = tuple(segment.name for segment in manifest.segments)
        with self._lock:
            kept = self._kept.get(manifest.tenant)
            if kept is None or kept[0] != names:
                index = super().open(manifest)
                # Kept here alone: an index replaced by a newer one is let go (its maps and
                # threads with it) once the questions still using it are answered.
                self._opened.remove(index)
                self._kept[manifest.tenant] = (names, index)
            return self._kept[manifest.tenant][1]

    def close(self) -> None:
        """Nothing: the indexes stay open for the next question."""

    def close_all(self) -> None:
        for _, index in self._kept.values():
            index.close()
        super().close()
