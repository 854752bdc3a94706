"""The comparables page (`smartgo-analytics web`): ask by product id or by picture, see the
comparables' pictures, prices and the suggested price band; `/api/comparables` answers the same
question as JSON, as `smartgo-analytics comparables --format json` prints it.

Pictures come from the object store: the local lake's files through `/pictures/<key>` (only keys
under the image prefix, checked and resolved inside it), S3's through short-lived presigned URLs.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from smartgo_analytics.comparables import (
    MAX_IMAGE_BYTES,
    MAX_K,
    Comparables,
    ComparablesError,
    DeploymentResources,
    KeptIndexFiles,
    UnusableImage,
    comparables,
    local_lake,
    no_vector_reason,
)
from smartgo_analytics.core.imaging import BadImage, thumbnail_jpeg
from smartgo_analytics.lake import KeptCatalog
from smartgo_analytics.lake_directory import LakeDirectory
from smartgo_analytics.layout import IMAGE_PREFIX, UnsafeKey, check_key, product_images_prefix
from smartgo_analytics.local.stack import StackError
from smartgo_analytics.web.forms import (
    FIELDS,
    FORM_BYTES,
    Refused,
    question_of,
    read_body,
    read_form,
)
from smartgo_analytics.web.guard import Guard, GuardMiddleware

log = logging.getLogger("smartgo_analytics.web")
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
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)


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
        self.resources = DeploymentResources() if resources is None else resources
        if store is None:
            store = local_lake() or self.resources["object_store"]
        self.store = store
        self.files = KeptIndexFiles(store, None if isinstance(store, LakeDirectory) else cache_dir)
        self.dagster_url = dagster_url
        self.why_no_vector = why_no_vector or self._why_no_vector
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
            found = comparables(
                **question,
                resources=self.resources,
                index_files=self.files,
                why_no_vector=self.why_no_vector,
            )
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
        self.files.close_all()
        self.kept.close()


def answer_json(found: Comparables) -> dict:
    """What `smartgo-analytics comparables --format json` prints."""
    return {
        "tenant": found.tenant,
        "query": found.query,
        "suggested_price": found.suggested.__dict__,
        "comparables": found.rows(),
    }


def create_app(answers: Answers | None = None, guard: Guard | None = None) -> Starlette:
    """The page and its API over `answers` (the deployment's by default), behind `guard` (the
    loopback names only, by default)."""
    answers = answers or Answers()
    guard = guard or Guard()
    endpoint = getattr(answers.store, "endpoint_url", None)
    if endpoint:  # presigned pictures from an S3-compatible endpoint of its own
        parts = urlsplit(endpoint)
        guard = dataclasses.replace(guard, picture_origins=(f"{parts.scheme}://{parts.netloc}",))

    async def page(request: Request) -> Response:
        fields = dict(request.query_params)
        nonce = request.state.csp_nonce
        picture = None
        try:
            if request.method == "POST":
                fields, picture = await read_form(request, MAX_IMAGE_BYTES + FORM_BYTES)
                if picture is None and not fields.get("product_id") and not fields.get("image_url"):
                    raise ComparablesError("choose a picture to upload, or give a product id")
            elif not fields.get("product_id"):
                # Reaching out for a URL is a POST from the page: a link or an <img> elsewhere
                # only fills the form in.
                return _render(fields, nonce)
            question = question_of(fields, picture)
            found, picture = await run_in_threadpool(answers.ask, question)
            shown = await run_in_threadpool(_shown_answer, answers, found, question, picture)
            return _render(fields, nonce, answer=shown)
        except (ComparablesError, Refused) as error:
            return _render(fields, nonce, error=str(error), status=getattr(error, "status", 400))
        except Exception:
            log.exception("the comparables page failed")
            return _render(
                fields, nonce, error="the answer failed on the server (see its log)", status=500
            )

    async def api(request: Request) -> Response:
        try:
            fields, picture = dict(request.query_params), None
            if request.method == "POST":
                content_type = request.headers.get("content-type", "")
                if content_type.startswith("image/") or content_type == "application/octet-stream":
                    picture = await read_body(request, MAX_IMAGE_BYTES + FORM_BYTES)
                else:
                    form, picture = await read_form(request, MAX_IMAGE_BYTES + FORM_BYTES)
                    fields |= form
            elif fields.get("image_url"):
                raise Refused("a picture's URL is asked with POST (a form field image_url)", 405)
            found, _ = await run_in_threadpool(answers.ask, question_of(fields, picture))
            return JSONResponse(answer_json(found))
        except (ComparablesError, Refused) as error:
            return JSONResponse({"error": str(error)}, status_code=getattr(error, "status", 400))
        except Exception:
            log.exception("the comparables API failed")
            return JSONResponse({"error": "the answer failed on the server (see its log)"}, 500)

    async def picture(request: Request) -> Response:
        path = answers.local_picture(request.path_params["key"])
        if path is None:
            return Response("no such picture", 404, media_type="text/plain")
        return FileResponse(
            path,
            media_type=PICTURE_TYPES[path.suffix[1:].lower()],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"},
        )

    async def sale(request: Request) -> Response:
        product_id = request.path_params["product_id"]
        try:
            rows = await run_in_threadpool(
                _sale_rows, answers.catalog, product_id, request.query_params.get("tenant")
            )
        except StackError:
            return JSONResponse({"error": "no data yet: run `smartgo-analytics demo` first"}, 404)
        except Exception:
            log.exception("reading a sale failed")
            return JSONResponse(
                {"error": "the table could not be read (see the server's log)"}, 500
            )
        if not rows:
            return JSONResponse({"error": f"no sale of product {product_id[:100]!r}"}, 404)
        return JSONResponse(rows)

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET", "POST"]),
            Route("/api/comparables", api, methods=["GET", "POST"]),
            Route("/api/sales/{product_id}", sale),
            Route("/pictures/{key:path}", picture),
        ],
        lifespan=_closing(answers),
        middleware=[Middleware(GuardMiddleware, guard=guard)],
    )
    app.state.answers = answers
    return app


def _closing(answers: Answers):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        answers.close()

    return lifespan


def _shown_answer(
    answers: Answers, found: Comparables, question: dict, picture: bytes | None
) -> dict:
    from smartgo_analytics.web.chart import price_chart

    band = found.suggested
    urls = answers.picture_urls(found)
    items = [
        {
            **item.__dict__,
            "picture": url,
            "sale": answers.sale_link(item.product_id, found.tenant),
            "day": answers.day_link(item.sold_date),
        }
        for item, url in zip(found.items, urls, strict=True)
    ]
    if picture is not None:
        query_picture = _data_uri(picture)
    else:
        query_picture = answers.picture_url(found.tenant, question["product_id"], None)
    chart = price_chart(
        [i.sold_price for i in found.items],
        [i.similarity for i in found.items],
        band.median,
        band.p25,
        band.p75,
    )
    return {
        "tenant": found.tenant,
        "query": found.query,
        "band": band,
        "items": items,
        "query_picture": query_picture,
        "chart": chart,
    }


def _data_uri(data: bytes) -> str | None:
    try:
        return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(data)).decode("ascii")
    except BadImage:
        return None


def _render(
    fields: dict,
    nonce: str,
    answer: dict | None = None,
    error: str | None = None,
    status: int = 200,
):
    html = TEMPLATES.get_template("page.html").render(
        nonce=nonce,
        fields={name: fields.get(name, "") for name in FIELDS},
        answer=answer,
        error=error,
        max_k=MAX_K,
        max_mb=MAX_IMAGE_BYTES // 2**20,
    )
    return HTMLResponse(html, status)


def _sale_rows(opened_catalog, product_id: str, tenant: str | None) -> list[dict]:
    """The table's rows of a product (its vector left out), as `smartgo-analytics query` reads them."""
    from pyiceberg.expressions import And, BooleanExpression, EqualTo, Reference
    from pyiceberg.expressions.literals import literal

    from smartgo_analytics.core.sales_table import IDENTIFIER

    with opened_catalog() as catalog:
        table = catalog.load_table(IDENTIFIER)
    names = [f.name for f in table.schema().fields if f.name != "embedding_vector"]
    where: BooleanExpression = EqualTo(term=Reference("product_id"), value=literal(product_id))
    if tenant:
        where = And(where, EqualTo(term=Reference("tenant_id"), value=literal(tenant)))
    rows = table.scan(row_filter=where, selected_fields=tuple(names)).to_arrow().to_pylist()
    return [
        {
            k: _without_path(v if isinstance(v, int | float | str | None) else str(v))
            for k, v in row.items()
        }
        for row in rows
    ]


def _without_path(value):
    """A local copy's file URI as its object key: an answer never shows where the server keeps
    its files."""
    if isinstance(value, str) and value.startswith("file://") and f"/{IMAGE_PREFIX}/" in value:
        return IMAGE_PREFIX + "/" + value.split(f"/{IMAGE_PREFIX}/", 1)[1]
    return value
