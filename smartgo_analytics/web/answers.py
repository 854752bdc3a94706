"""The page's answers: the deployment's comparables with the indexes kept open between
questions, a URL ask's picture fetched once and safely, and where each sale's picture is seen."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from smartgo_analytics.comparables import (
    Comparables,
    ComparablesError,
    DeploymentResources,
    Source,
    UnusableImage,
    comparables,
)
from smartgo_analytics.comparables.search import embedder_space
from smartgo_analytics.deployment import this_deployment
from smartgo_analytics.lake import KeptCatalog, no_vector_reason
from smartgo_analytics.lake_directory import LakeDirectory
from smartgo_analytics.layout import (
    IMAGE_PREFIX,
    UnsafeKey,
    check_key,
    product_images_prefix,
)
from smartgo_analytics.local.stack import StackError
from smartgo_analytics.similarity.reader import KeptIndexReader

PICTURE_SECONDS = 300  # a presigned picture URL's life
URL_ASK_SECONDS = 5.0  # a URL ask's one deadline: connection, redirects and body
URL_ASKS_AT_ONCE = 4
URL_REFUSED = (
    "no usable picture at that URL (only public picture hosts are asked, once, within "
    f"{URL_ASK_SECONDS:g} s)"
)
PICTURE_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
}


class Answers:
    """The deployment's comparables for the page: the indexes kept open between questions, the
    deployment's resources (embedder, fetcher, catalog) built when a question first needs them."""

    def __init__(
        self,
        store=None,
        resources: dict | None = None,
        cache_dir: Path | None = None,
        dagster_url: str | None = None,
        why_no_vector=None,
        catalog=None,
        picture_hosts: tuple[str, ...] = (),
    ):
        """`catalog`: a context manager factory yielding the Iceberg catalog (by default the
        deployment's, opened once for the page's life: locally, the stack's PostgreSQL is started
        once, not per request); `why_no_vector(product_id)` as comparables() takes it (by default
        read from that catalog); `picture_hosts`: `host:port` entries a URL ask may reach although
        they are loopback or private (none by default, whatever the pipeline's allowlist)."""
        self.kept = KeptCatalog()
        self.catalog = catalog or self.kept
        resources = DeploymentResources() if resources is None else resources
        if store is None:
            store = this_deployment().lake_files() or resources["object_store"]
        self.store = store
        cache = None if isinstance(store, LakeDirectory) else cache_dir
        self.reader = KeptIndexReader(store, cache, lambda: embedder_space(resources))
        self.source = Source(self.reader, resources, why_no_vector or self._why_no_vector)
        self.dagster_url = dagster_url
        self.picture_hosts = {h.lower() for h in picture_hosts}
        self._lookups = ThreadPoolExecutor(8, thread_name_prefix="picture-lookup")
        self._url_asks = threading.BoundedSemaphore(URL_ASKS_AT_ONCE)

    def _why_no_vector(self, product_id: str) -> str | None:
        try:
            with self.catalog() as catalog:
                return no_vector_reason(catalog, product_id)
        except StackError:  # no local data yet; its message names a server path
            raise ComparablesError("no data yet: run `smartgo-analytics demo` first") from None

    def ask(self, question: dict) -> tuple[Comparables, bytes | None]:
        """The answer, and the picture asked about (a URL's fetched once, for both the answer
        and the page's thumbnail)."""
        image = question["image"]
        if isinstance(image, str):
            question = {**question, "image": self.fetch_picture(image)}
        try:
            found = comparables(**question, source=self.source)
        except UnusableImage:
            if isinstance(image, str):  # what a URL answered is not told apart: no port scans
                raise ComparablesError(URL_REFUSED) from None
            raise
        if isinstance(image, str):
            found = dataclasses.replace(found, query=f"image {image}")  # as the command says it
        return found, question["image"]

    def fetch_picture(self, url: str) -> bytes:
        """A URL ask's picture: public addresses only (or a `picture_hosts` host:port), one
        attempt within URL_ASK_SECONDS, a few at a time; every failure the same words, so that
        the page tells nothing of what answered (no port scanning through it)."""
        # Imported here: Dagster comes with the fetcher, and a page that is never asked for a URL
        # answers its first question a second sooner without it.
        from smartgo_analytics.resources.images import ImageFetcher, ImageFetchError

        if not self._url_asks.acquire(blocking=False):
            raise ComparablesError("too many pictures are being fetched: try again shortly")
        try:
            parts = urlsplit(url)
            named = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
            allowed = [parts.hostname or ""] if named.lower() in self.picture_hosts else []
            fetcher = ImageFetcher(allowlist=allowed, timeout_s=URL_ASK_SECONDS, retries=0)
            data = fetcher.fetch(url).data
            if data is None:
                raise ImageFetchError("no body")
            return data  # what is not a picture is refused in the same words by `ask`
        except (ImageFetchError, ValueError):
            raise ComparablesError(URL_REFUSED) from None
        finally:
            self._url_asks.release()

    def picture_url(self, tenant: str, product_id: str, sha256: str | None) -> str | None:
        """Where the browser gets a sale's picture: its copy's key (the one with `sha256`, else the
        newest), served by this app from the local lake or presigned on S3; None without a copy."""
        try:
            prefix = product_images_prefix(tenant, product_id)
            keys = self.store.list_keys(prefix)
        except (UnsafeKey, OSError):
            return None
        named = [k for k in keys if sha256 and k.rsplit("/", 1)[-1].startswith(f"{sha256}.")]
        chosen = (named or keys or [None])[-1]
        if chosen is None:
            return None
        if isinstance(self.store, LakeDirectory):
            return f"/pictures/{quote(chosen)}"
        return self.store.presigned_url(chosen, PICTURE_SECONDS)

    def picture_urls(self, found: Comparables) -> list[str | None]:
        return list(
            self._lookups.map(
                lambda item: self.picture_url(found.tenant, item.product_id, item.image_sha256),
                found.items,
            )
        )

    def local_picture(self, key: str) -> Path | None:
        """The local lake's file of a picture key, or None: only a plain key under the image
        prefix whose real path (links followed) stays inside it, and only a picture's type."""
        if not isinstance(self.store, LakeDirectory):
            return None
        try:
            check_key(key)
        except UnsafeKey:
            return None
        if not key.startswith(f"{IMAGE_PREFIX}/") or key.rsplit(".", 1)[-1] not in PICTURE_TYPES:
            return None
        pictures = (self.store.root / IMAGE_PREFIX).resolve()
        try:
            real = (self.store.root / key).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not (real.is_file() and real.is_relative_to(pictures)):
            return None
        return real if real.suffix[1:].lower() in PICTURE_TYPES else None

    def sale_link(self, product_id: str, tenant: str) -> str:
        return f"/api/sales/{quote(product_id)}?{urlencode({'tenant': tenant})}"

    def day_link(self, sold_date: str) -> str | None:
        if not self.dagster_url:
            return None
        query = urlencode({"view": "partitions", "partition": sold_date})
        return f"{self.dagster_url}/assets/smartgo_sales_iceberg?{query}"

    def close(self) -> None:
        self._lookups.shutdown()
        self.reader.close_all()
        self.kept.close()
