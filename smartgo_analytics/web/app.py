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
import email.parser
import email.policy
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
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
    comparables,
    local_lake,
    read_picture,
)
from smartgo_analytics.core.imaging import BadImage, thumbnail_jpeg
from smartgo_analytics.lake_directory import LakeDirectory
from smartgo_analytics.layout import IMAGE_PREFIX, UnsafeKey, check_key, product_images_prefix

log = logging.getLogger("smartgo_analytics.web")
PICTURE_SECONDS = 300  # a presigned picture URL's life
FORM_BYTES = 64 * 1024  # an upload's form fields and multipart framing, beside the picture
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
FIELDS = ("product_id", "image_url", "tenant", "category", "condition", "k")
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)


class Refused(Exception):
    """A question the page cannot take (too large, not a form): a message and an HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


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
    ):
        """`catalog`: a context manager factory yielding the Iceberg catalog (the deployment's
        by default); `why_no_vector(product_id)` as comparables() takes it."""
        self.catalog = catalog or _deployment_catalog
        self.resources = DeploymentResources() if resources is None else resources
        if store is None:
            store = local_lake() or self.resources["object_store"]
        self.store = store
        self.files = KeptIndexFiles(store, None if isinstance(store, LakeDirectory) else cache_dir)
        self.dagster_url = dagster_url
        self.why_no_vector = why_no_vector
        self._lookups = ThreadPoolExecutor(8, thread_name_prefix="picture-lookup")

    def ask(self, question: dict) -> tuple[Comparables, bytes | None]:
        """The answer, and the picture asked about (a URL's fetched once, for both the answer
        and the page's thumbnail)."""
        image = question["image"]
        if isinstance(image, str):
            question = {**question, "image": read_picture(image, self.resources)}
        found = comparables(
            **question,
            resources=self.resources,
            index_files=self.files,
            why_no_vector=self.why_no_vector,
        )
        if isinstance(image, str):
            found = dataclasses.replace(found, query=f"image {image}")  # as the command says it
        return found, question["image"]

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


def question_of(fields: dict[str, str], picture: bytes | None = None) -> dict:
    """The comparables() arguments of a form or a query string; ComparablesError for a bad k."""
    given = {name: (fields.get(name) or "").strip() or None for name in FIELDS}
    raw_k = given.pop("k") or "10"
    try:
        k = int(raw_k)
    except ValueError:
        raise ComparablesError(
            f"k must be a whole number from 1 to {MAX_K}, got {raw_k[:20]!r}"
        ) from None
    url = given.pop("image_url")
    image: str | bytes | None = picture if picture is not None else url
    if isinstance(image, str) and not image.startswith(("http://", "https://")):
        raise ComparablesError("the picture's URL must start with http:// or https://")
    return {**given, "image": image, "k": k}


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past `limit` bytes before more is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(f"the upload is {int(declared)} bytes, over the {limit} byte limit", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(f"the upload is over the {limit} byte limit", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def form_fields(body: bytes, content_type: str) -> tuple[dict[str, str], bytes | None]:
    """A multipart/form-data body's text fields and its `picture` file (None when empty)."""
    if not content_type.startswith("multipart/form-data"):
        raise Refused("send the picture as a form upload (multipart/form-data)", 415)
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise Refused("the form upload could not be read")
    fields, picture = {}, None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name == "picture" and part.get_filename() is not None:
            picture = data or None
        elif isinstance(name, str) and name in FIELDS:
            fields[name] = data.decode("utf-8", "replace")
    return fields, picture


def answer_json(found: Comparables) -> dict:
    """What `smartgo-analytics comparables --format json` prints."""
    return {
        "tenant": found.tenant,
        "query": found.query,
        "suggested_price": found.suggested.__dict__,
        "comparables": found.rows(),
    }


def create_app(answers: Answers | None = None) -> Starlette:
    """The page and its API over `answers` (the deployment's by default)."""
    answers = answers or Answers(why_no_vector=_deployment_why_no_vector)

    async def page(request: Request) -> Response:
        fields = dict(request.query_params)
        picture = None
        try:
            if request.method == "POST":
                body = await read_body(request, MAX_IMAGE_BYTES + FORM_BYTES)
                fields, picture = form_fields(body, request.headers.get("content-type", ""))
                if picture is None and not fields.get("product_id") and not fields.get("image_url"):
                    raise ComparablesError("choose a picture to upload, or give a product id")
            if request.method == "GET" and not (
                fields.get("product_id") or fields.get("image_url")
            ):
                return _render(fields)
            question = question_of(fields, picture)
            found, picture = await run_in_threadpool(answers.ask, question)
            shown = await run_in_threadpool(_shown_answer, answers, found, question, picture)
            return _render(fields, answer=shown)
        except (ComparablesError, Refused) as error:
            return _render(fields, error=str(error), status=getattr(error, "status", 400))
        except Exception:
            log.exception("the comparables page failed")
            return _render(
                fields, error="the answer failed on the server (see its log)", status=500
            )

    async def api(request: Request) -> Response:
        try:
            fields, picture = dict(request.query_params), None
            if request.method == "POST":
                body = await read_body(request, MAX_IMAGE_BYTES + FORM_BYTES)
                content_type = request.headers.get("content-type", "")
                if content_type.startswith("image/") or content_type == "application/octet-stream":
                    picture = body
                else:
                    form, picture = form_fields(body, content_type)
                    fields |= form
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


def _render(fields: dict, answer: dict | None = None, error: str | None = None, status: int = 200):
    html = TEMPLATES.get_template("page.html").render(
        fields={name: fields.get(name, "") for name in FIELDS},
        answer=answer,
        error=error,
        max_k=MAX_K,
        max_mb=MAX_IMAGE_BYTES // 2**20,
    )
    return HTMLResponse(html, status, headers={"X-Content-Type-Options": "nosniff"})


def _deployment_why_no_vector(product_id: str) -> str | None:
    from smartgo_analytics.lake import why_no_vector
    from smartgo_analytics.local.stack import StackError

    try:
        return why_no_vector(product_id)
    except StackError as error:  # no local data yet
        raise ComparablesError(str(error)) from None


def _deployment_catalog():
    from smartgo_analytics.lake import deployment_catalog

    return deployment_catalog()


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
        {k: v if isinstance(v, int | float | str | None) else str(v) for k, v in row.items()}
        for row in rows
    ]
